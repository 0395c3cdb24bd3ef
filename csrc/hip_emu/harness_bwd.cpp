// C entry point of the CPU harness for the attention backward (loaded with ctypes by tests/test_hip_emulated_bwd.py):
// builds BwdParams with the extension's own code (make_fwd_params + make_bwd_params, csrc/fwd_params.h and
// csrc/bwd_params.h), sizes the workspace with the kernel's own bwd_workspace_bytes_for, registers every tensor's
// extent for the bounds checks, and runs csrc/hip/bwd_kernel.h and the dQ postprocess over the grids the ROCm
// launch (csrc/hip/bwd_gfx942.hip) uses. Compiled once per element type (-DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16).
#include <string>
#include <vector>

#include "../hip/bwd_kernel.h"
#include "emu.h"

#ifndef FLASHCORE_EMU_ELEMENT
#error "compile with -DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16"
#endif
#define FLASHCORE_CAT_(a, b) a##b
#define FLASHCORE_CAT(a, b) FLASHCORE_CAT_(a, b)

namespace {

using namespace flashcore;
using Element = gfx942::FLASHCORE_EMU_ELEMENT;
#ifndef FLASHCORE_BWD_FAULT
#define FLASHCORE_BWD_FAULT 0  // the negative tests' builds set 1 or 2 (bwd_kernel's kFault)
#endif

size_t extent_bytes(const Strided& t, size_t element_bytes) {  // bytes from data to the view's last element
  int64_t last = 0;
  for (int d = 0; d < t.dim; ++d) {
    if (t.size[d] == 0) return 0;
    last += (t.size[d] - 1) * t.stride[d];
  }
  return static_cast<size_t>(last + 1) * element_bytes;
}

struct Launch {
  std::vector<emu::GlobalRange> ranges;
  int os_threads, schedule;
  bool reverse_blocks;
  emu::LaunchStats stats;
};

template <int D>
int64_t workspace_for(const BwdParams& p) {
  return gfx942::bwd_workspace_bytes_for<D>(p);
}

template <int D>
std::string run(const BwdParams& p, Launch& l) {
  using T = gfx942::BwdTile<D>;
  const FwdParams& f = p.fwd;
  const std::function<void()> main = [&p] { gfx942::bwd_kernel<D, Element, FLASHCORE_BWD_FAULT>(p); };
  std::string message = emu::launch({T::grid_x(f), f.heads_kv, f.batch}, T::kThreads, main, l.ranges.data(),
                                    static_cast<int>(l.ranges.size()), l.os_threads, &l.stats,
                                    static_cast<emu::Schedule>(l.schedule), l.reverse_blocks);
  if (!message.empty()) return message;
  const std::function<void()> post = [&p] { gfx942::bwd_dq_kernel<D, Element>(p); };
  const int post_x = (f.seqlen_q + gfx942::kDqPostRows - 1) / gfx942::kDqPostRows;
  return emu::launch({post_x, f.heads_q, f.batch}, gfx942::kDqPostThreads, post, l.ranges.data(),
                     static_cast<int>(l.ranges.size()), l.os_threads, nullptr);
}

BwdParams make_params(const void* const* tensors, const int64_t* sizes, const int64_t* strides, const int* dims,
                      float* lse, const float* delta, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k,
                      int batch, int max_seqlen_q, int max_seqlen_k, float softmax_scale, int causal, int window_left,
                      int window_right, float softcap, int deterministic, Strided (&t)[8]) {
  for (int i = 0; i < 8; ++i) {
    t[i].data = tensors[i];
    t[i].dim = dims[i];
    for (int d = 0; d < 4; ++d) t[i].size[d] = sizes[4 * i + d], t[i].stride[d] = strides[4 * i + d];
  }
  const HalfType dtype = Element::kIsBf16 ? HalfType::kBf16 : HalfType::kFp16;
  const FwdParams f = make_fwd_params(t[0], t[1], t[2], t[3], lse, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
                                      max_seqlen_k, softmax_scale, causal != 0, window_left, window_right, softcap,
                                      dtype);
  return make_bwd_params(f, t[4], delta, t[5], t[6], t[7], deterministic != 0);
}

}  // namespace

extern "C" {

// tensors: q, k, v, out, dout, dq, dk, dv (sizes / strides: 8 x 4 int64 in elements, dims: 8 ints); lse and delta
// float32 laid out alike (lse_numel each). With workspace == nullptr: returns the workspace bytes the launch
// needs in *workspace_bytes and runs nothing. Otherwise runs the main kernel and the postprocess.
// schedule: emu::Schedule; reverse_blocks: hand out blocks last to first. stats (optional): blocks, fiber
// switches, wave collectives, barriers of the main kernel.
#if FLASHCORE_BWD_FAULT  // the negative tests' builds: emu_bwd_fault1_Bf16, ...
#define FLASHCORE_EMU_BWD_NAME FLASHCORE_CAT(FLASHCORE_CAT(emu_bwd_fault, FLASHCORE_BWD_FAULT), FLASHCORE_CAT(_, FLASHCORE_EMU_ELEMENT))
#else
#define FLASHCORE_EMU_BWD_NAME FLASHCORE_CAT(emu_bwd_, FLASHCORE_EMU_ELEMENT)
#endif
int FLASHCORE_EMU_BWD_NAME(
    const void* const* tensors, const int64_t* sizes, const int64_t* strides, const int* dims, float* lse,
    const float* delta, int64_t lse_numel, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k, int batch,
    int max_seqlen_q, int max_seqlen_k, float softmax_scale, int causal, int window_left, int window_right,
    float softcap, int deterministic, void* workspace, int64_t* workspace_bytes, int os_threads, int schedule,
    int reverse_blocks, uint64_t* stats, char* error, int error_bytes) {
  Strided t[8];
  BwdParams p = make_params(tensors, sizes, strides, dims, lse, delta, cu_seqlens_q, cu_seqlens_k, batch,
                            max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap,
                            deterministic, t);
  int64_t bytes = 0;
  switch (p.fwd.head_dim) {
    case 64: bytes = workspace_for<64>(p); break;
    case 96: bytes = workspace_for<96>(p); break;
    case 128: bytes = workspace_for<128>(p); break;
    case 192: bytes = workspace_for<192>(p); break;
    case 256: bytes = workspace_for<256>(p); break;
    default: return emu::to_c_status("head_dim " + std::to_string(p.fwd.head_dim) + " has no kernel", error,
                                     error_bytes);
  }
  if (workspace == nullptr) {
    *workspace_bytes = bytes;
    return 0;
  }
  if (*workspace_bytes < bytes) return emu::to_c_status("workspace too small", error, error_bytes);
  p.workspace = workspace;

  Launch l{{}, os_threads, schedule, reverse_blocks != 0, {}};
  for (int i = 0; i < 8; ++i) l.ranges.push_back({tensors[i], extent_bytes(t[i], 2), i >= 5});
  l.ranges.push_back({lse, static_cast<size_t>(lse_numel) * 4, false});
  l.ranges.push_back({delta, static_cast<size_t>(lse_numel) * 4, false});
  l.ranges.push_back({workspace, static_cast<size_t>(bytes), true});
  if (cu_seqlens_q != nullptr) {
    l.ranges.push_back({cu_seqlens_q, static_cast<size_t>(batch + 1) * 4, false});
    l.ranges.push_back({cu_seqlens_k, static_cast<size_t>(batch + 1) * 4, false});
  }
  std::string message;
  switch (p.fwd.head_dim) {
    case 64: message = run<64>(p, l); break;
    case 96: message = run<96>(p, l); break;
    case 128: message = run<128>(p, l); break;
    case 192: message = run<192>(p, l); break;
    default: message = run<256>(p, l); break;
  }
  if (stats != nullptr) {
    stats[0] = l.stats.blocks, stats[1] = l.stats.fiber_switches, stats[2] = l.stats.wave_collectives,
    stats[3] = l.stats.barriers;
  }
  return emu::to_c_status(message, error, error_bytes);
}

}  // extern "C"
