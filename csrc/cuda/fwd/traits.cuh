// Compile-time shape of the sm_90a forward for one head dim: tile sizes from csrc/tiles/sm90_fwd.h (the only place
// they are written), the shared-memory layout, warpgroup roles, register budgets and named-barrier ids.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../tiles/sm90_fwd.h"
#include "../ptx/ptx.cuh"
#include "../tile_handoff.cuh"
#include "schedule.h"

namespace flashcore::sm90::fwd {

struct TileRow {
  int head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm;
};

constexpr TileRow kTileTable[] = {
#define FLASHCORE_TILE_ROW(d, m, n, s, w, c) TileRow{d, m, n, s, w, c},
    FLASHCORE_TILES_SM90_FWD(FLASHCORE_TILE_ROW)
#undef FLASHCORE_TILE_ROW
};

constexpr TileRow tile_row(int head_dim) {
  for (const TileRow& r : kTileTable) {
    if (r.head_dim == head_dim) return r;
  }
  return TileRow{0, 0, 0, 0, 0, 0};
}

// -DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS: head dim 64 with its previous row (v3: 128 x 128, 3 stages, 1 producer +
// 2 consumers) instead of the table's 3 consumers, for bisecting on a GPU (bench/notes/fwd_sm90.md v4).
// -DFLASHCORE_FWD_SM90_D128_N176: head dim 128 with 176-key tiles (FA3's non-causal D=128 tile) instead of the
// table's 128, everything else as the table's row: a v5 candidate to time against the default on a GPU
// (bench/notes/fwd_sm90.md). Not a second table row: the shape advisor reads one row per head dim.
// 176: the largest multiple of 16 whose estimated peak live registers fit 240 (O 64 + S 88 + P 44 + ~40 = ~236;
// 192 would be ~248; ptxas fits 176 in R0-R229, no spill). Q + 2 stages = 32 + 2 x 88 = 208 KB: a separate
// output buffer (32 KB more) no longer fits, so kSeparateOut turns false and the output is staged in Q's buffer.
constexpr int kD128SwitchBlockN = 176;
template <int D>
constexpr TileRow fwd_row() {
#if defined(FLASHCORE_FWD_SM90_D64_TWO_CONSUMERS)
  if (D == 64) return TileRow{64, 128, 128, 3, 3, 1};
#endif
#if defined(FLASHCORE_FWD_SM90_D128_N176)
  if (D == 128) {
    TileRow row = tile_row(D);
    row.block_n = kD128SwitchBlockN;
    return row;
  }
#endif
  return tile_row(D);
}

constexpr int kMaxSmemPerBlock = 227 * 1024;  // sm_90 opt-in limit (228 KB per SM minus 1 KB reserved per CTA)

template <int D>
struct FwdTraits {
  static constexpr TileRow kRow = fwd_row<D>();
  static_assert(kRow.head_dim == D, "no row for this head dim in csrc/tiles/sm90_fwd.h");

  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = kRow.block_m;
  static constexpr int kBlockN = kRow.block_n;
  static constexpr int kStages = kRow.stages;

  // ---- warpgroup roles: warpgroup 0 loads, 1 .. kConsumers compute (64 query rows each: the M of one wgmma)
  static constexpr int kWarpgroups = kRow.warpgroups;
  static constexpr int kConsumers = kWarpgroups - 1;
  static constexpr int kWgThreads = frag::kWarpgroupThreads;
  static constexpr int kThreads = kWarpgroups * kWgThreads;
  static constexpr int kConsumerWarps = kConsumers * kWgThreads / frag::kWarpSize;
  static_assert((kConsumers == 2 || kConsumers == 3) && kRow.ctas_per_sm == 1,
                "the kernel is written for 1 producer + 2 or 3 consumers, one CTA per SM");
  static_assert(kBlockM == kConsumers * frag::kWgmmaM, "block_m is one 64-row wgmma per consumer warpgroup");
  static_assert(kBlockN % 16 == 0 && kBlockN >= 16 && kBlockN <= 256,
                "block_n: the K of P*V in steps of 16, the N of one wgmma (<= 256), the rows of one TMA box (<= 256)");
  static_assert(kBlockM <= 256, "block_m: the rows of one TMA box of Q (<= 256)");

  // ---- registers: 65536 / kThreads at launch (__launch_bounds__(kThreads, 1)), moved by setmaxnreg. The producer
  // only computes coordinates; the consumers hold O (D/2), S of the next tile (N/2) and two P fragments (N/4 each):
  // see the table. They get what the pool has left, in setmaxnreg's granule of 8: 240 with 2 consumers (168 x 384
  // - 24 x 128 over 256), 160 with 3 (128 x 512 - 24 x 128 over 384).
  static constexpr uint32_t kRegFile = 65536;  // 32-bit registers per SM (sm_90), one CTA per SM
  static constexpr uint32_t kRegGranule = 8;   // setmaxnreg counts and the launch cap are multiples of 8
  static constexpr uint32_t kRegsAtEntry = kRegFile / kThreads / kRegGranule * kRegGranule;
  static constexpr uint32_t kProducerRegs = 24;  // setmaxnreg's minimum
  static constexpr uint32_t kConsumerRegs =
      (kRegsAtEntry * kThreads - kProducerRegs * kWgThreads) / (kConsumers * kWgThreads) / kRegGranule * kRegGranule;
  static_assert(kProducerRegs * kWgThreads + kConsumerRegs * kConsumers * kWgThreads <= kRegsAtEntry * kThreads,
                "setmaxnreg.inc would wait forever for registers the pool does not have");
  static_assert(kConsumerRegs <= 256, "setmaxnreg's maximum");
  static_assert(kConsumers != 2 || kConsumerRegs == 240, "2 consumers: 240 registers each (the table's comment)");
  static_assert(kConsumers != 3 || kConsumerRegs == 160, "3 consumers: 160 registers each (the table's comment)");

  // ---- named barriers (0 is __syncthreads): the consumers' ping-pong, one per consumer ("it may issue its GEMMs
  // now"), then one per consumer's epilogue (its 128 threads). 1 + 2 x 3 = 7 of the 16 at most.
  static constexpr uint32_t kSchedBarrier = 1;                  // + consumer index
  static constexpr uint32_t kEpilogueBarrier = 1 + kConsumers;  // + consumer index
  static constexpr uint32_t kPingPongThreads = 2 * frag::kWarpgroupThreads;  // the waiting consumer + the passer

  // ---- shared memory: tiles are 64-column panels of 128-byte rows with the 128B swizzle (what TMA writes with a
  // 64-element inner box and what wgmma descriptors read); head dims that are not a multiple of 64 get a last panel
  // whose missing columns TMA zero-fills (they add 0 to Q.K^T and are never stored).
  static constexpr int kElemBytes = 2;
  static constexpr int kPanelCols = static_cast<int>(ptx::kSwizzle128Row) / kElemBytes;  // 64
  static constexpr int kPanels = (D + kPanelCols - 1) / kPanelCols;
  static constexpr uint32_t kQPanelBytes = kBlockM * ptx::kSwizzle128Row;
  static constexpr uint32_t kKvPanelBytes = kBlockN * ptx::kSwizzle128Row;
  static constexpr uint32_t kQBytes = kPanels * kQPanelBytes;      // complete_tx of a Q load (whole boxes count)
  static constexpr uint32_t kKvTileBytes = kPanels * kKvPanelBytes;  // complete_tx of one K (or V) tile
  static constexpr int kOutRows = frag::kWgmmaM;  // a consumer stores its own 64 rows (TMA store box rows)
  // The output is staged for its TMA store in a buffer of its own when shared memory allows (D <= 128): then the
  // consumers release Q as soon as their last S = Q K^T is done, and the next tile's Q loads under this tile's last
  // P V and epilogue. Otherwise (D = 192, 256; D = 128 under FLASHCORE_FWD_SM90_D128_N176) each consumer stages its
  // output in its own, by then dead, 64 rows of Q, and the next Q waits for the stores. Building with
  // -DFLASHCORE_FWD_SM90_OUT_IN_Q forces the second way for every head dim (a switch for bisecting on a GPU).
  static constexpr int kFixedSmemBytes = 2 * 1024;  // barriers (rounded to the 1 KB alignment) + base alignment slack
  // Bytes of a layout with q_sized Q-sized buffers (Q, the output, a second Q) next to the K/V ring.
  static constexpr int smem_estimate(int q_sized) {
    return q_sized * kQBytes + 2 * kStages * kKvTileBytes + kFixedSmemBytes;
  }
#if defined(FLASHCORE_FWD_SM90_OUT_IN_Q)
  static constexpr bool kSeparateOut = false;
#else
  static constexpr bool kSeparateOut = smem_estimate(2) <= kMaxSmemPerBlock;
#endif
  // Arrivals that free Q: with an output buffer, lane 0 of each consumer warp once its last S GEMM is done; else
  // thread 0 of each consumer once the output store staged in Q has read it.
  static constexpr uint32_t kQEmptyArrivals = kSeparateOut ? kConsumerWarps : kConsumers;
  // -DFLASHCORE_FWD_SM90_ITEM_PIPELINE: the consumers pipeline across work items (consumer.cuh): the turn that
  // issues an item's last P V also issues the next item's first S, and the epilogue runs under it. The next item's Q
  // must be resident by then, so Q gets two buffers, used by alternate items. Only where the output has a buffer of
  // its own (the epilogue must not wait for Q) and three Q-sized buffers fit: D = 64, 96, 128 (D = 128: 3 x 32 KB +
  // 2 x 64 KB + 2 KB = 226 KB). A candidate to time against the default at short seqlens (bench/notes/fwd_sm90.md).
#if defined(FLASHCORE_FWD_SM90_ITEM_PIPELINE)
  static constexpr bool kItemPipeline = kSeparateOut && smem_estimate(3) <= kMaxSmemPerBlock;
#else
  static constexpr bool kItemPipeline = false;
#endif
  static constexpr int kQBuffers = kItemPipeline ? 2 : 1;
  static constexpr int kQSizedBuffers = kQBuffers + (kSeparateOut ? 1 : 0);  // what shared memory holds

  static constexpr int kQkSteps = D / 16;        // wgmma K slices of S = Q K^T (16 head-dim columns each)
  static constexpr int kPvSteps = kBlockN / 16;  // wgmma K slices of O += P V (16 keys each)
  static constexpr int kSRegs = kBlockN / 2;     // fp32 S accumulator registers per thread
  static constexpr int kORegs = D / 2;           // fp32 O accumulator registers per thread
  static constexpr int kPRegs = kBlockN / 4;     // packed 16-bit P registers per thread (4 per K slice)
  static_assert(D % 16 == 0, "head_dim is a whole number of wgmma K slices");
};

// The output staging buffer (Q's panel layout), present only when FwdTraits<D>::kSeparateOut; an empty base costs
// no bytes otherwise.
template <int D, bool kPresent = FwdTraits<D>::kSeparateOut>
struct OutStorage {};
template <int D>
struct OutStorage<D, true> {
  alignas(1024) uint8_t out[FwdTraits<D>::kQBytes];
};

template <int D>
struct SharedStorage : OutStorage<D> {
  using T = FwdTraits<D>;
  // Q tile (two under kItemPipeline, alternate items); without an output buffer, each consumer stages its output here
  alignas(1024) uint8_t q[T::kQBuffers][T::kQBytes];
  alignas(1024) uint8_t k[T::kStages][T::kKvTileBytes];
  alignas(1024) uint8_t v[T::kStages][T::kKvTileBytes];
  uint64_t q_full[T::kQBuffers];   // producer -> consumers: Q landed (1 arrival + kQBytes)
  uint64_t q_empty[T::kQBuffers];  // consumers -> producer: Q is dead (kQEmptyArrivals, above)
  uint64_t k_full[T::kStages], k_empty[T::kStages];  // K ring: full (1 + tx), empty (lane 0 of each consumer warp)
  uint64_t v_full[T::kStages], v_empty[T::kStages];  // V ring, same stage index as K
  // Dynamic schedule: tile indices from the producer to the consumers (tile_handoff.cuh). full: 1 arrival (the
  // producer, after storing the index); empty: lane 0 of each consumer warp, once its warp has read it.
  uint64_t tile_full[kTileSlots], tile_empty[kTileSlots];
  int tile[kTileSlots];
};

constexpr int kSmemAlign = static_cast<int>(ptx::kSwizzle128Atom);  // swizzled tiles start on 1024-byte boundaries

template <int D>
constexpr int smem_bytes() {
  return static_cast<int>(sizeof(SharedStorage<D>)) + kSmemAlign;  // the dynamic base is only 16-byte aligned
}

}  // namespace flashcore::sm90::fwd
