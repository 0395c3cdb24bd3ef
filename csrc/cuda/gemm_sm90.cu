// launch_gemm_sm90 (gemm_params.h): the sm_90a GEMM of gemm_sm90_kernel.cuh, planned by plan_gemm
// (gemm_sm90_launch_plan.cuh, shared with the CPU model's harness), launched on torch's current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <string>

#include "../gemm_params.h"
#include "gemm_sm90_launch_plan.cuh"

namespace flashcore {

void launch_gemm_sm90(const GemmParams& p) {
  using namespace sm90::gemm_bf16;
  int device = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  GemmLaunchPlan plan;
  const std::string error = plan_gemm(p, num_sms, plan);
  TORCH_CHECK(error.empty(), "flashcore gemm: ", error);
  // Opting in to more than 48 KB of dynamic shared memory is per function and device; it is cheap to repeat.
  C10_CUDA_CHECK(cudaFuncSetAttribute(gemm_bf16_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  gemm_bf16_kernel<<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(plan.tmap_a, plan.tmap_b, plan.tmap_c,
                                                                          plan.grid);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace flashcore
