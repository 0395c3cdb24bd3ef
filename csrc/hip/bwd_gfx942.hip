// The gfx942 attention backward: instantiations (head dim x element type) of the main kernel and the dQ
// postprocess and, in the ROCm build, bwd_workspace_bytes and launch_bwd (csrc/bwd_params.h). The kernels are
// csrc/hip/bwd_kernel.h; argument checks, delta (the preprocess) and the zero-filled workspace come from the
// shared host code (csrc/bwd.cpp). tests/test_hip_isa.py compiles this file device-only
// (FLASHCORE_HIP_NO_RUNTIME); the CPU harness includes bwd_kernel.h itself.
#include "bwd_kernel.h"

namespace flashcore::gfx942 {

#define FLASHCORE_BWD_INSTANCE(D, E)                                          \
  template FLASHCORE_GLOBAL void bwd_kernel<D, E>(const BwdParams);           \
  template FLASHCORE_GLOBAL void bwd_dq_kernel<D, E>(const BwdParams);
FLASHCORE_BWD_INSTANCE(64, Bf16)
FLASHCORE_BWD_INSTANCE(96, Bf16)
FLASHCORE_BWD_INSTANCE(128, Bf16)
FLASHCORE_BWD_INSTANCE(192, Bf16)
FLASHCORE_BWD_INSTANCE(256, Bf16)
FLASHCORE_BWD_INSTANCE(64, Fp16)
FLASHCORE_BWD_INSTANCE(96, Fp16)
FLASHCORE_BWD_INSTANCE(128, Fp16)
FLASHCORE_BWD_INSTANCE(192, Fp16)
FLASHCORE_BWD_INSTANCE(256, Fp16)
#undef FLASHCORE_BWD_INSTANCE

}  // namespace flashcore::gfx942

#if !defined(FLASHCORE_HIP_NO_RUNTIME)
#include <ATen/hip/impl/HIPStreamMasqueradingAsCUDA.h>
#include <c10/hip/HIPException.h>

namespace flashcore {
namespace {

template <int D>
void launch_head_dim(const BwdParams& p, hipStream_t stream) {
  using T = gfx942::BwdTile<D>;
  const FwdParams& f = p.fwd;
  const bool bf16 = f.dtype == HalfType::kBf16;
  const auto main = bf16 ? gfx942::bwd_kernel<D, gfx942::Bf16> : gfx942::bwd_kernel<D, gfx942::Fp16>;
  main<<<dim3(T::grid_x(f), f.heads_kv, f.batch), T::kThreads, 0, stream>>>(p);
  C10_HIP_KERNEL_LAUNCH_CHECK();
  const auto post = bf16 ? gfx942::bwd_dq_kernel<D, gfx942::Bf16> : gfx942::bwd_dq_kernel<D, gfx942::Fp16>;
  const int post_x = (f.seqlen_q + gfx942::kDqPostRows - 1) / gfx942::kDqPostRows;
  post<<<dim3(post_x, f.heads_q, f.batch), gfx942::kDqPostThreads, 0, stream>>>(p);
  C10_HIP_KERNEL_LAUNCH_CHECK();
}

}  // namespace

int64_t bwd_workspace_bytes(const BwdParams& p) {
  switch (p.fwd.head_dim) {
    case 64: return gfx942::bwd_workspace_bytes_for<64>(p);
    case 96: return gfx942::bwd_workspace_bytes_for<96>(p);
    case 128: return gfx942::bwd_workspace_bytes_for<128>(p);
    case 192: return gfx942::bwd_workspace_bytes_for<192>(p);
    default: return gfx942::bwd_workspace_bytes_for<256>(p);  // bwd.cpp admits only the five head dims
  }
}

void launch_bwd(const BwdParams& p) {
  const hipStream_t stream = at::hip::getCurrentHIPStreamMasqueradingAsCUDA().stream();
  switch (p.fwd.head_dim) {
    case 64: return launch_head_dim<64>(p, stream);
    case 96: return launch_head_dim<96>(p, stream);
    case 128: return launch_head_dim<128>(p, stream);
    case 192: return launch_head_dim<192>(p, stream);
    default: return launch_head_dim<256>(p, stream);
  }
}

}  // namespace flashcore
#endif
