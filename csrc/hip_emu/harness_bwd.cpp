// C entry points of the CPU harness for the attention backward (loaded with ctypes by tests/test_hip_emulated_bwd.py):
// builds BwdParams with the extension's own code (make_fwd_params + make_bwd_params, csrc/fwd_params.h and
// csrc/bwd_params.h), sizes the workspace with the kernel's own bwd_workspace_bytes_for, registers every tensor's
// extent for the bounds checks, and runs csrc/hip/bwd_kernel.h and the dQ postprocess over the grids the ROCm
// launch (csrc/hip/bwd_gfx942.hip) uses. Compiled once per element type (-DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16).
#include <string>
#include <vector>

#include "../hip/bwd_kernel.h"
#include "emu.h"
#include "harness_common.h"

namespace {

using namespace flashcore;
using emu_harness::Element;
using emu_harness::extent_bytes;
#define FLASHCORE_EMU_IS_BF16 FLASHCORE_CAT(FLASHCORE_EMU_IS_, FLASHCORE_EMU_ELEMENT)
#define FLASHCORE_EMU_IS_Bf16 1
#define FLASHCORE_EMU_IS_Fp16 0
#ifndef FLASHCORE_BWD_FAULT
#define FLASHCORE_BWD_FAULT 0  // the negative tests' builds set 1 or 2 (bwd_kernel's kFault)
#endif

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
  emu_harness::strided_views(8, tensors, sizes, strides, dims, t);
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

extern "C" {

// The LDS byte offsets of one wave-wide access of the backward kernel, from BwdTile's own address functions (the
// ones the kernel uses), for the bank model of harness_lds.cpp. kind: 0 Q / dO operand read (step t), 1 Q^T /
// dO^T operand read (dim block x step), 2 dS operand read (step), 3 row-major tile store (wave x row of the
// unit), 4 transposed tile store (wave x dim of the unit), 5 dS write (wave x register). offsets[l] = -1: lane
// idle. Returns the access width in bytes, 0 past the last step, -1 for a head dim without a kernel.
#if !FLASHCORE_BWD_FAULT && FLASHCORE_EMU_IS_BF16
int emu_bwd_lds_offsets(int d, int kind, int step, int64_t* offsets) {
  auto fill = [&](auto tile) -> int {
    using T = decltype(tile);
    for (int l = 0; l < 64; ++l) offsets[l] = -1;
    switch (kind) {
      case 0: {
        if (step >= T::kRowBlocks * (T::kRowChunks / 2)) return 0;
        const int rb = step / (T::kRowChunks / 2), t = step % (T::kRowChunks / 2);
        for (int l = 0; l < 64; ++l) {
          offsets[l] = gfx942::LanePairAddress<T::kRowChunks>(T::kQ, T::query_of_row(l % 32), l / 32).at(rb, t);
        }
        return 16;
      }
      case 1: {
        if (step >= T::kDimBlocks * (T::kColChunks / 2)) return 0;
        const int db = step / (T::kColChunks / 2), t = step % (T::kColChunks / 2);
        for (int l = 0; l < 64; ++l) {
          offsets[l] = gfx942::LanePairAddress<T::kColChunks>(T::kQt, gfx942::contiguous_16(l % 32), l / 32).at(db, t);
        }
        return 16;
      }
      case 2: {
        if (step >= T::kRowBlocks * (T::kDsChunks / 2)) return 0;
        const int rb = step / (T::kDsChunks / 2), t = step % (T::kDsChunks / 2);
        for (int l = 0; l < 64; ++l) offsets[l] = gfx942::LanePairAddress<T::kDsChunks>(T::kDs, l % 32, l / 32).at(rb, t);
        return 16;
      }
      case 3:
      case 4: {
        const int per_wave = kind == 3 ? 4 : 8;
        if (step >= T::kWaves * T::kUnitLoads * per_wave) return 0;
        const int wave = step / (T::kUnitLoads * per_wave), i = step / per_wave % T::kUnitLoads, part = step % per_wave;
        for (int l = 0; l < 64; ++l) {
          const int unit = wave * 64 + l + i * T::kThreads;
          if (unit < T::kUnits) offsets[l] = kind == 3 ? T::row_store(unit, part) : T::kQt + T::col_store(unit, part);
        }
        return kind == 3 ? 16 : 8;
      }
      case 5: {
        if (step >= T::kWaves * T::kRowBlocks * 16) return 0;
        const int wave = step / (T::kRowBlocks * 16), rb = step / 16 % T::kRowBlocks, r = step % 16;
        for (int l = 0; l < 64; ++l) offsets[l] = T::ds_store_of(l, wave, rb, r) & ~3u;
        return 4;  // ds_write_b16, modelled as the 4-byte word it writes (lanes of one word do not conflict)
      }
      default: return 0;
    }
  };
  switch (d) {
    case 64: return fill(gfx942::BwdTile<64>{});
    case 96: return fill(gfx942::BwdTile<96>{});
    case 128: return fill(gfx942::BwdTile<128>{});
    case 192: return fill(gfx942::BwdTile<192>{});
    case 256: return fill(gfx942::BwdTile<256>{});
    default: return -1;
  }
}
#endif

}  // extern "C"
