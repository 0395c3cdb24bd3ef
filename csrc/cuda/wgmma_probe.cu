// launch_wgmma_probe / launch_wgmma_chain (wgmma_probe_params.h): the probe kernels of wgmma_probe_kernel.cuh,
// planned by wgmma_probe_plan.cuh (shared with the CPU model's harness), one CTA on torch's current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <string>

#include "../wgmma_probe_params.h"
#include "wgmma_probe_plan.cuh"

namespace flashcore {
namespace {

// One CTA of one warpgroup on torch's current stream; opting in to the probe's dynamic shared memory first.
template <class Kernel, class... Args>
void launch_one_cta(Kernel kernel, int smem_bytes, Args... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  kernel<<<1, sm90::wgmma_probe::kThreads, smem_bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_wgmma_probe(const WgmmaProbeParams& p, float* d_out) {
  sm90::wgmma_probe::ProbePlan plan;
  const std::string error = sm90::wgmma_probe::plan_wgmma_probe(p, plan);
  TORCH_CHECK(error.empty(), "flashcore wgmma_probe: ", error);
  launch_one_cta(plan.kernel, plan.smem_bytes, plan.map_a, plan.map_b, p.a, plan.geom, d_out);
}

void launch_wgmma_chain(const WgmmaChainParams& p, float* s_out, float* o_out) {
  sm90::wgmma_probe::ChainPlan plan;
  const std::string error = sm90::wgmma_probe::plan_wgmma_chain(p, plan);
  TORCH_CHECK(error.empty(), "flashcore wgmma_probe_chain: ", error);
  launch_one_cta(plan.kernel, plan.smem_bytes, plan.map_q, plan.map_k, plan.map_v, s_out, o_out);
}

}  // namespace flashcore
