// C entry point of the CPU harness for the attention forward (loaded with ctypes by tests/test_hip_emulated.py):
// builds FwdParams with the extension's own code (make_fwd_params, csrc/fwd_params.h), registers every tensor's
// extent for the bounds checks, and runs csrc/hip/fwd_kernel.h over the same grid the ROCm launch uses.
// Compiled once per element type (-DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16) so the two compile in parallel.
#include <string>
#include <vector>

#include "../hip/fwd_kernel.h"
#include "emu.h"
#include "harness_common.h"

namespace {

using namespace flashcore;
using emu_harness::Element;
using emu_harness::extent_bytes;

template <int D>
std::string run(const FwdParams& p, const std::vector<emu::GlobalRange>& ranges, int os_threads, int schedule,
                emu::LaunchStats* stats) {
  using T = gfx942::FwdTile<D>;
  const std::function<void()> kernel = [&p] { gfx942::fwd_kernel<D, Element>(p); };
  const emu::Dim3 grid{T::grid_x(p), p.heads_q, p.batch};
  return emu::launch(grid, T::kThreads, kernel, ranges.data(), static_cast<int>(ranges.size()), os_threads, stats,
                     static_cast<emu::Schedule>(schedule));
}

}  // namespace

extern "C" {

// tensors: q, k, v, out; sizes / strides: 4 x 4 int64 (elements), dims: 4 ints; lse float32 contiguous.
// schedule: emu::Schedule (0 round robin, 1 / 2 one wave at a time, ascending / descending).
// stats (optional): blocks, fiber switches, wave collectives, barriers.
int FLASHCORE_CAT(emu_fwd_, FLASHCORE_EMU_ELEMENT)(
    const void* const* tensors, const int64_t* sizes, const int64_t* strides, const int* dims, float* lse,
    int64_t lse_numel, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k, int batch, int max_seqlen_q,
    int max_seqlen_k, float softmax_scale, int causal, int window_left, int window_right, float softcap,
    int os_threads, int schedule, uint64_t* stats, char* error, int error_bytes) {
  Strided t[4];
  emu_harness::strided_views(4, tensors, sizes, strides, dims, t);
  std::vector<emu::GlobalRange> ranges;
  for (int i = 0; i < 4; ++i) ranges.push_back({tensors[i], extent_bytes(t[i], 2), i == 3});
  ranges.push_back({lse, static_cast<size_t>(lse_numel) * 4, true});
  if (cu_seqlens_q != nullptr) {
    ranges.push_back({cu_seqlens_q, static_cast<size_t>(batch + 1) * 4, false});
    ranges.push_back({cu_seqlens_k, static_cast<size_t>(batch + 1) * 4, false});
  }
  const HalfType dtype = Element::kIsBf16 ? HalfType::kBf16 : HalfType::kFp16;
  const FwdParams p = make_fwd_params(t[0], t[1], t[2], t[3], lse, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
                                      max_seqlen_k, softmax_scale, causal != 0, window_left, window_right, softcap,
                                      dtype);
  emu::LaunchStats s;
  std::string message;
  switch (p.head_dim) {
    case 64: message = run<64>(p, ranges, os_threads, schedule, &s); break;
    case 96: message = run<96>(p, ranges, os_threads, schedule, &s); break;
    case 128: message = run<128>(p, ranges, os_threads, schedule, &s); break;
    case 192: message = run<192>(p, ranges, os_threads, schedule, &s); break;
    case 256: message = run<256>(p, ranges, os_threads, schedule, &s); break;
    default: message = "head_dim " + std::to_string(p.head_dim) + " has no kernel";
  }
  if (stats != nullptr) {
    stats[0] = s.blocks, stats[1] = s.fiber_switches, stats[2] = s.wave_collectives, stats[3] = s.barriers;
  }
  return emu::to_c_status(message, error, error_bytes);
}

}  // extern "C"
