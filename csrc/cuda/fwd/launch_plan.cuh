// Host side of one sm_90a forward launch, without torch or the CUDA runtime: the tensor maps, the kernel arguments,
// the persistent grid for a given SM count, the dynamic shared memory and whether the dynamic schedule needs its
// counter. The extension's launch (launch.cuh) and the CPU model's harness (csrc/cuda_emu/harness_fwd.cpp) both
// call plan_fwd, so the model runs the real host code; errors come back as text for each to report its way.
#pragma once

#include <cstdint>
#include <string>

#include "kernel.cuh"

namespace flashcore::sm90::fwd {

struct FwdLaunchPlan {
  CUtensorMap tmap_q, tmap_k, tmap_v, tmap_o;  // k and v stay zeroed when there are no keys (never read then)
  KernelArgs args;      // args.tile_counter is left null: the launcher points it at a zeroed int32 (needs_counter)
  int blocks;           // persistent CTAs, one per SM at most; 0: nothing to launch (no tiles)
  int threads;          // per CTA
  int smem_bytes;       // dynamic shared memory per CTA
  bool needs_counter;   // dynamic schedule: one int32, zero at launch, for this launch alone
};

// A (rows, heads, head_dim) slab per batch entry as a 4D map (head_dim, rows, heads, batch), boxes of 64 columns x
// box_rows rows of one head. The sequence is its own dimension, so boxes hanging past a dense sequence's end read
// zeros and store nothing. Strides of size-1 dimensions are never followed; TMA still wants them multiples of 16
// below 2^40, so they get the slab's byte extent. Returns "" or what is wrong, naming the tensor.
inline std::string encode_rows_map(CUtensorMap* map, ptx::TmaElem elem, const void* base, int64_t head_dim,
                                   int64_t rows, int64_t heads, int64_t batch, int64_t stride_s, int64_t stride_h,
                                   int64_t stride_b, uint32_t box_rows, const char* name) {
  constexpr uint64_t kElemBytes = 2;
  const uint64_t dims[4] = {static_cast<uint64_t>(head_dim), static_cast<uint64_t>(rows < 1 ? 1 : rows),
                            static_cast<uint64_t>(heads), static_cast<uint64_t>(batch)};
  uint64_t extent = 16;
  const int64_t strides_el[3] = {stride_s, stride_h, stride_b};
  for (int d = 0; d < 3; ++d) {
    const uint64_t reach = static_cast<uint64_t>(strides_el[d]) * kElemBytes * dims[d + 1];
    if (dims[d + 1] > 1 && reach > extent) extent = reach;
  }
  extent = (extent + 15) / 16 * 16;
  uint64_t strides[3];
  for (int d = 0; d < 3; ++d) {
    strides[d] = dims[d + 1] > 1 ? static_cast<uint64_t>(strides_el[d]) * kElemBytes : extent;
  }
  const uint32_t box[4] = {64, box_rows, 1, 1};
  const std::string problem =
      ptx::encode_tensor_map(map, elem, 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
  return problem.empty() ? problem : std::string("cannot describe ") + name + " to TMA: " + problem;
}

// The plan for params p on a device of num_sms SMs and l2_bytes of L2; static_schedule: the round-robin instead of
// the dynamic schedule (FLASHCORE_SM90_STATIC_SCHEDULE=1). Returns "" or the error.
template <int D>
std::string plan_fwd(const FwdParams& p, int num_sms, int l2_bytes, bool static_schedule, FwdLaunchPlan& plan) {
  using T = FwdTraits<D>;
  static_assert(smem_bytes<D>() <= kMaxSmemPerBlock, "shared memory over the 227 KB per-block limit");
  static_assert(sizeof(SharedStorage<D>) + kSmemAlign <= T::smem_estimate(T::kQSizedBuffers),
                "kSeparateOut's / kItemPipeline's estimate of shared memory is below the real layout");
  plan = FwdLaunchPlan{};
  const ptx::TmaElem elem = p.dtype == HalfType::kBf16 ? ptx::TmaElem::kBf16 : ptx::TmaElem::kFp16;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t batch_dim = varlen ? 1 : p.batch;  // varlen: one packed sequence of rows_q / rows_k rows

  std::string error = encode_rows_map(&plan.tmap_q, elem, p.q, D, p.rows_q, p.heads_q, batch_dim, p.q_stride_s,
                                      p.q_stride_h, p.q_stride_b, T::kBlockM, "q");
  if (error.empty()) {
    error = encode_rows_map(&plan.tmap_o, elem, p.out, D, p.rows_q, p.heads_q, batch_dim, p.o_stride_s,
                            p.o_stride_h, p.o_stride_b, T::kOutRows, "out");
  }
  if (error.empty() && p.rows_k > 0) {  // no keys at all: every row is empty, nothing is loaded (k may be null)
    error = encode_rows_map(&plan.tmap_k, elem, p.k, D, p.rows_k, p.heads_kv, batch_dim, p.k_stride_s,
                            p.k_stride_h, p.k_stride_b, T::kBlockN, "k");
    if (error.empty()) {
      error = encode_rows_map(&plan.tmap_v, elem, p.v, D, p.rows_k, p.heads_kv, batch_dim, p.v_stride_s,
                              p.v_stride_h, p.v_stride_b, T::kBlockN, "v");
    }
  }
  if (!error.empty()) return error;

  KernelArgs& args = plan.args;
  args.p = p;
  // The kernel's band arithmetic (schedule.h Band) is int32: row + offset - window_left and row + offset +
  // window_right + 1 overflow for windows near 2^31. A side at least as long as the longest sequence (seqlen_*:
  // max_seqlen_* for varlen) cuts nothing: it is the same as unbounded, which takes no arithmetic.
  if (args.p.window_left >= p.seqlen_k) args.p.window_left = -1;
  if (args.p.window_right >= p.seqlen_q) args.p.window_right = -1;
  const int64_t m_blocks = (static_cast<int64_t>(p.seqlen_q) + T::kBlockM - 1) / T::kBlockM;
  const int64_t pairs = static_cast<int64_t>(p.batch) * p.heads_q;
  const int64_t num_tiles = m_blocks * pairs;
  if (num_tiles > INT32_MAX) {
    return std::to_string(num_tiles) + " tiles of " + std::to_string(T::kBlockM) + " query rows; at most 2^31 - 1";
  }
  args.q_per_kv = p.heads_q / p.heads_kv;
  // K and V of one (sequence, K/V head), shared by heads_q / heads_kv query heads; half of L2 for the group in flight.
  const int64_t kv_bytes_per_pair = 2 * static_cast<int64_t>(p.seqlen_k) * D * T::kElemBytes / args.q_per_kv;
  args.order = TileOrder{static_cast<int>(m_blocks), static_cast<int>(pairs),
                         heads_per_group(l2_bytes / 2, kv_bytes_per_pair, static_cast<int>(pairs))};
  plan.blocks = static_cast<int>(num_tiles < num_sms ? num_tiles : num_sms);  // one CTA per SM, persistent
  plan.threads = T::kThreads;
  plan.smem_bytes = smem_bytes<D>();
  // A single wave (tiles <= CTAs) has nothing to balance and takes no counter.
  plan.needs_counter = num_tiles > plan.blocks && !static_schedule;
  return "";
}

}  // namespace flashcore::sm90::fwd
