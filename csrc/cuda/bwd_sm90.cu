// Host side of the sm_90a attention backward: the vendor's bwd_workspace_bytes and launch_bwd (bwd_params.h).
// The main kernel (bwd_sm90_kernel.cuh) adds dQ in fp32 into the workspace; the postprocess
// (bwd_sm90_dq_convert.cuh) converts it to dq's dtype. What to launch comes from plan_bwd
// (bwd_sm90_launch_plan.cuh, shared with the CPU model's harness); this file adds the device queries and the
// launches on torch's current stream. One main-kernel instantiation per head dim x dtype: causal / window /
// softcap / GQA / varlen / deterministic are runtime arguments.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "../bwd_params.h"
#include "bwd_sm90_launch_plan.cuh"

namespace flashcore::sm90::bwd {
namespace {

int sm_count() {
  int device = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  return num_sms;
}

template <int kHeadDim, HalfType kType>
void launch_planned(const BwdParams& p) {
  BwdLaunchPlan plan;
  const std::string error = plan_bwd<kHeadDim>(p, sm_count(), static_schedule_requested(), plan);
  TORCH_CHECK(error.empty(), "flashcore bwd (sm_90a): ", error);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (plan.blocks > 0) {
    const auto kernel = bwd_sm90_kernel<kHeadDim, kType>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes));
    kernel<<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(plan.tmap_q, plan.tmap_k, plan.tmap_v,
                                                                   plan.tmap_do, plan.tmap_lse, plan.tmap_delta,
                                                                   plan.tmap_dq, plan.args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (plan.convert_vecs > 0) {
    bwd_dq_convert_kernel<kType><<<plan.convert_blocks, kConvertThreads, 0, stream>>>(
        static_cast<const float*>(p.workspace), static_cast<uint16_t*>(p.dq), plan.convert_vecs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <HalfType kType>
void launch_typed(const BwdParams& p) {
  switch (p.fwd.head_dim) {
    case 64: return launch_planned<64, kType>(p);
    case 96: return launch_planned<96, kType>(p);
    case 128: return launch_planned<128, kType>(p);
    case 192: return launch_planned<192, kType>(p);
    case 256: return launch_planned<256, kType>(p);
    default: TORCH_CHECK(false, "flashcore bwd (sm_90a): no kernel for head_dim ", p.fwd.head_dim);
  }
}

}  // namespace
}  // namespace flashcore::sm90::bwd

namespace flashcore {

int64_t bwd_workspace_bytes(const BwdParams& p) { return sm90::bwd::workspace_bytes(p); }

void launch_bwd(const BwdParams& p) {
  using namespace sm90::bwd;
  if (p.fwd.dtype == HalfType::kBf16) {
    launch_typed<HalfType::kBf16>(p);
  } else {
    launch_typed<HalfType::kFp16>(p);
  }
}

}  // namespace flashcore
