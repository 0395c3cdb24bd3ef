// The gfx942 attention forward: its instantiations (head dim x element type) and, in the ROCm build, the launch.
// The kernel is csrc/hip/fwd_kernel.h; argument checks and FwdParams are filled by the shared host code
// (csrc/fwd.cpp). tests/test_hip_isa.py compiles this file device-only (FLASHCORE_HIP_NO_RUNTIME); the CPU
// harness includes fwd_kernel.h itself.
#include "fwd_kernel.h"

namespace flashcore::gfx942 {

#define FLASHCORE_FWD_INSTANCE(D, E) template FLASHCORE_GLOBAL void fwd_kernel<D, E>(const FwdParams);
FLASHCORE_FWD_INSTANCE(64, Bf16)
FLASHCORE_FWD_INSTANCE(96, Bf16)
FLASHCORE_FWD_INSTANCE(128, Bf16)
FLASHCORE_FWD_INSTANCE(192, Bf16)
FLASHCORE_FWD_INSTANCE(256, Bf16)
FLASHCORE_FWD_INSTANCE(64, Fp16)
FLASHCORE_FWD_INSTANCE(96, Fp16)
FLASHCORE_FWD_INSTANCE(128, Fp16)
FLASHCORE_FWD_INSTANCE(192, Fp16)
FLASHCORE_FWD_INSTANCE(256, Fp16)
#undef FLASHCORE_FWD_INSTANCE

}  // namespace flashcore::gfx942

#if !defined(FLASHCORE_HIP_NO_RUNTIME)
#include <ATen/hip/impl/HIPStreamMasqueradingAsCUDA.h>
#include <c10/hip/HIPException.h>

namespace flashcore {
namespace {

template <int D>
void launch_head_dim(const FwdParams& p, hipStream_t stream) {
  using T = gfx942::FwdTile<D>;
  const dim3 grid(T::grid_x(p), p.heads_q, p.batch);
  const auto kernel = p.dtype == HalfType::kBf16 ? gfx942::fwd_kernel<D, gfx942::Bf16> : gfx942::fwd_kernel<D, gfx942::Fp16>;
  kernel<<<grid, T::kThreads, 0, stream>>>(p);
  C10_HIP_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_fwd(const FwdParams& p) {
  const hipStream_t stream = at::hip::getCurrentHIPStreamMasqueradingAsCUDA().stream();
  switch (p.head_dim) {
    case 64: return launch_head_dim<64>(p, stream);
    case 96: return launch_head_dim<96>(p, stream);
    case 128: return launch_head_dim<128>(p, stream);
    case 192: return launch_head_dim<192>(p, stream);
    default: return launch_head_dim<256>(p, stream);  // fwd.cpp admits only the five head dims
  }
}

}  // namespace flashcore
#endif
