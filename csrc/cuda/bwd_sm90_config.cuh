// Compile-time shape of the sm_90a attention backward for one head dim: the row of csrc/tiles/sm90_bwd.h and what
// follows from it (warpgroup roles, register split, shared-memory layout), with the checks that keep it in budget.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../tiles/sm90_bwd.h"
#include "ptx/layout.cuh"
#include "ptx/smem.cuh"
#include "tile_handoff.cuh"

namespace flashcore::sm90::bwd {

struct TileRow {
  int head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm;
};

#define FC_BWD_TILE_ROW(d, bm, bn, st, wg, cps) TileRow{d, bm, bn, st, wg, cps},
constexpr TileRow kTileRows[] = {FLASHCORE_TILES_SM90_BWD(FC_BWD_TILE_ROW)};
#undef FC_BWD_TILE_ROW

constexpr TileRow tile_row(int head_dim) {
  for (const TileRow& row : kTileRows) {
    if (row.head_dim == head_dim) return row;
  }
  return TileRow{0, 0, 0, 0, 0, 0};  // no row: BwdConfig's static_asserts name the problem
}

constexpr int kWgmmaM = frag::kWgmmaM;          // 64 rows per wgmma: keys of S^T, dK, dV; queries of dQ
constexpr int kWgmmaK = 16;                     // K of one wgmma for 16-bit inputs
constexpr int kColBlock = 64;                   // 64 16-bit values = 128 bytes: one 128B-swizzle row = TMA box width
constexpr int kRowBytes = ptx::kSwizzle128Row;  // bytes per stored tile row (one column block)
constexpr int kElemBytes = 2;                   // bf16 / fp16
constexpr int kWarpgroupThreads = frag::kWarpgroupThreads;
constexpr int kMaxSmemPerBlock = 227 * 1024;    // sm_90 opt-in limit per block
constexpr int kSmemAlign = static_cast<int>(ptx::kSwizzle128Atom);  // swizzled tiles start on 1024 B
constexpr int kTmaSmemAlign = 128;  // TMA destinations without swizzle: 128-byte aligned (LSE / delta rows)
constexpr int kDqBoxCols = 32;      // fp32 per 128-byte swizzled row: the widest box the 128B swizzle allows
// one [64 queries][32 fp32] dQ staging box: 8 KB
constexpr int kDqBoxBytes = kWgmmaM * kDqBoxCols * static_cast<int>(sizeof(float));

template <int kHeadDim_>
struct BwdConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr TileRow kRow = tile_row(kHeadDim);
  static_assert(kRow.head_dim == kHeadDim, "no row for this head dim in csrc/tiles/sm90_bwd.h");
  static constexpr int kBlockM = kRow.block_m;
  static constexpr int kBlockN = kRow.block_n;
  static constexpr int kStages = kRow.stages;
  static constexpr int kConsumers = kRow.warpgroups - 1;  // warpgroup 0 produces
  static_assert(kConsumers == 2, "the roles below are written for two consumer warpgroups");
  static_assert(kRow.ctas_per_sm == 1, "the register split assumes one CTA per SM");
  static_assert(kBlockM == kColBlock, "P^T / dS^T rows are one 128-byte swizzled row of 64 queries");

  // Roles. The block's keys come in 64-key groups (the M of S^T, dK, dV). With two groups each consumer owns one
  // (all head-dim columns of its dK / dV, all queries of S^T); with one group both share it: consumer `part`
  // computes S^T / dP^T for half of the queries and dK / dV / dQ for half of the head-dim columns.
  static constexpr int kKeyGroups = kBlockN / kWgmmaM;
  static_assert(kKeyGroups * kWgmmaM == kBlockN && (kKeyGroups == 1 || kKeyGroups == 2), "block_n is 64 or 128");
  static constexpr int kParts = kConsumers / kKeyGroups;  // consumers sharing one key group
  static constexpr int kSQueries = kBlockM / kParts;      // N of a consumer's S^T and dP^T GEMMs
  static constexpr int kCols = kHeadDim / kParts;         // head-dim columns of a consumer's dK, dV, dQ
  static_assert(kSQueries == 32 || kSQueries == 64, "S^T GEMM N: 32 or 64");
  static_assert(kCols % 32 == 0, "column pieces are 32 or 64 wide");
  // S^T and dP^T in flight together (dP^T's GEMM overlapping the exponentials) when dK + dV + both fp32 tiles
  // leave room for addresses: every head dim but 128, measured (D = 128 spills with both, 128 + 64 + ~60 > 240).
  static constexpr int kOverlapColsMax = 160;
  static constexpr bool kOverlapSdP = kCols + kSQueries <= kOverlapColsMax;
  // With softcap, tanh in a pass of its own over S^T before the exponentials (one uniform branch, so the exponential
  // loop is straight-line: tested per score, ptxas kept a branch around each and no two MUFU.EX2 issued back to
  // back). Not where dP^T is in flight with the full kOverlapColsMax (D = 96): the pass spilled 16-32 bytes there,
  // so the test stays per score.
  static constexpr bool kSoftcapPass = !kOverlapSdP || kCols + kSQueries < kOverlapColsMax;
  // dV += P^T dO and dK += dS^T Q with A from registers (RS): P^T and dS^T are this consumer's accumulator tiles,
  // packed to 16 bits, and a 16-query slice of an accumulator is exactly wgmma's register-A fragment. That halves
  // those GEMMs' shared-memory operand traffic (SS m64n64k16 reads 4 KB per 32 tensor cycles: all of the 128 B/clk)
  // and P^T is never stored. Only when a consumer owns its keys' whole S^T (kParts == 1): with shared keys each
  // holds half of the queries, and its dV / dK columns need all of them. -DFLASHCORE_BWD_SM90_SS_DKV builds the
  // SS form everywhere (to bisect on a GPU).
#if defined(FLASHCORE_BWD_SM90_SS_DKV)
  static constexpr bool kRsDkv = false;
#else
  static constexpr bool kRsDkv = kParts == 1;
#endif
  // dQ one tile behind (-DFLASHCORE_BWD_SM90_DQ_LAG, bwd_sm90.md v3): tile t's dQ GEMM runs after tile t + 1's
  // S^T / dP^T / dS^T, from a second dS^T buffer, and the consumers hand each other their dS^T halves by one-way
  // signals (bar.arrive by the writer, bar.sync by the reader) instead of meeting twice per tile: they may drift up
  // to about a tile apart, so that one's exponentials can run under the other's GEMMs. RS form only (its P^T
  // buffer is not needed: the second dS^T buffer takes its place).
  // -DFLASHCORE_BWD_SM90_DQ_LAG_PINGPONG adds an order: consumer 1 issues a tile's S^T GEMM after consumer 0 has
  // issued it, and consumer 0 the next tile's after consumer 1 (two named barriers), which keeps the two about a GEMM
  // apart instead of leaving the drift to chance (FlashAttention-3's forward orders its warpgroups so).
#if defined(FLASHCORE_BWD_SM90_DQ_LAG) || defined(FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG)
  static constexpr bool kDqLag = kRsDkv;
#else
  static constexpr bool kDqLag = false;
#endif
#if defined(FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG)
  static constexpr bool kPingPong = kDqLag;
#else
  static constexpr bool kPingPong = false;
#endif
  static constexpr int kDsBuffers = kDqLag ? 2 : 1;
  static constexpr int kColBlocks = (kHeadDim + kColBlock - 1) / kColBlock;  // D = 96: 2 blocks, the 2nd half zeros
  static constexpr int kKSteps = kHeadDim / kWgmmaK;  // K steps of S^T = K Q^T and dP^T = V dO^T (over D)

  // Registers: 384 threads at __launch_bounds__(384, 1) start at 168 each (65536 / 384, granule 8): a pool of
  // 64512. The producer is one thread walking the schedule and issuing TMA copies: 24, setmaxnreg's floor. Each
  // consumer thread holds dK + dV (kCols fp32 registers) plus, one at a time, the S^T tile (kSQueries / 2) with its
  // packed P, the dP^T tile, or one dQ piece (<= 32), and addresses: the rest, 240 (24 x 128 + 240 x 256 = 64512).
  // D = 128 with block_n = 128 needs all of it (232 spilled).
  static constexpr int kThreads = kRow.warpgroups * kWarpgroupThreads;
  static constexpr uint32_t kProducerRegs = 24;
  static constexpr uint32_t kConsumerRegs = 240;
  static constexpr uint32_t kRegPool = 65536 / kThreads / 8 * 8 * kThreads;
  static_assert(kProducerRegs * kWarpgroupThreads + kConsumerRegs * kConsumers * kWarpgroupThreads <= kRegPool,
                "setmaxnreg.inc would wait forever for registers the pool does not have");

  // Shared-memory tile sizes: every tile is stored as column blocks of [rows][64] values (the TMA box).
  static constexpr int kKColBlockBytes = kBlockN * kRowBytes;  // K or V: one column block of block_n keys
  static constexpr int kQColBlockBytes = kBlockM * kRowBytes;  // Q or dO: one column block of block_m queries
  static constexpr uint32_t kKvBytes = 2u * kColBlocks * kKColBlockBytes;     // K + V: complete_tx of kv_full
  static constexpr uint32_t kRowStatBytes = kBlockM * sizeof(float);  // one tile's LSE (or delta) rows
  // complete_tx of a stage: Q + dO tiles and the LSE + delta rows (TMA counts whole boxes, zero-filled parts too)
  static constexpr uint32_t kStageTmaBytes = 2u * kColBlocks * kQColBlockBytes + 2u * kRowStatBytes;
  static constexpr int kConsumerWarps = kConsumers * kWarpgroupThreads / frag::kWarpSize;

  // dQ columns: consumer 0 takes [0, kDqSplit), consumer 1 the rest; a multiple of 32 (the pieces' N and the dQ
  // staging box width), consumer 0 the wider share (D = 96: 64 + 32; D = 192: 96 + 96).
  static constexpr int kDqSplit = (kHeadDim / 2 + 31) / 32 * 32;
  // dQ by TMA reduce-add (both modes): each consumer stages all its dQ columns of a tile as [64 queries][32 fp32]
  // boxes (one 128-byte swizzled row per query) and one thread reduce-adds them into the workspace. Where the
  // staging does not fit next to the tiles (D = 256: 208 + 64 KB), red.global.add (deterministic: ordered plain
  // loads / stores) stays.
  static constexpr int kDqBoxes = kDqSplit / kDqBoxCols;  // per consumer: consumer 0's share, the wider
  static constexpr int kDqStageBytes = kConsumers * kDqBoxes * kDqBoxBytes;
  // The tiles' bytes (K, V, the Q / dO ring, dS^T, P^T: one 128-byte row in the RS form, bounded by an atom) plus
  // a bound on the rest (LSE / delta rows, mbarriers and the hand-off ring) and the alignment pad: smem_bytes() is
  // checked exactly by plan_bwd's static_assert.
  static constexpr int kTileBytes = static_cast<int>(kKvBytes) + 2 * kStages * kColBlocks * kQColBlockBytes +
                                    kDsBuffers * kBlockN * kBlockM * kElemBytes +
                                    (kRsDkv ? kSmemAlign : kBlockN * kBlockM * kElemBytes);
  static constexpr int kBarrierBytesBound = 1024;  // mbarriers + the hand-off ring: < 128 B today
  static constexpr int kSmallBytesBound = 2 * kStages * static_cast<int>(kRowStatBytes) + kBarrierBytesBound;
  static constexpr bool kDqByTma = kTileBytes + kDqStageBytes + kSmallBytesBound + kSmemAlign <= kMaxSmemPerBlock;
  static_assert(!kDqLag || (kDqByTma && kParts == 1), "kDqLag's barrier ids stand in for those it does not use");
  // Deterministic mode: releases of a query tile's semaphore per contributing block. By TMA each consumer passes
  // its own adds on (no barrier between them); otherwise one thread releases both consumers' adds.
  static constexpr int kDqReleasesPerBlock = kDqByTma ? kConsumers : 1;
};

// Deterministic dQ by TMA, one consumer's thread 0: the tile semaphore it still has to release once its
// reduce-adds complete (a tile later; nullptr: none owed), and whether an early look found this tile's turn there.
// In shared memory: D = 128's consumers have no register to spare across a tile.
struct DqTurn {
  int32_t* owed;
  int32_t seen;
};

// The consumers' dQ staging boxes (C::kDqByTma), 128B-swizzled like the map that reduces them; empty otherwise.
template <class C, bool kStaged = C::kDqByTma>
struct DqStaging {
  float box[C::kConsumers][C::kDqBoxes][kWgmmaM * kDqBoxCols];
};
template <class C>
struct DqStaging<C, false> {};

template <class C>
struct SharedStorage {
  uint16_t k[C::kColBlocks][C::kBlockN * kColBlock];
  uint16_t v[C::kColBlocks][C::kBlockN * kColBlock];
  uint16_t q[C::kStages][C::kColBlocks][C::kBlockM * kColBlock];
  uint16_t dout[C::kStages][C::kColBlocks][C::kBlockM * kColBlock];
  uint16_t ds[C::kDsBuffers][C::kBlockN * C::kBlockM];  // dS^T [keys][queries] (softmax_scale and the softcap
                                                       // derivative in); kDqLag: tile t's in buffer t % 2
  [[no_unique_address]] DqStaging<C> dq;  // dQ boxes on their way to the workspace (TMA reduce-add)
  // P^T [keys][queries], 128B-swizzled rows: read by the SS dV GEMM; the RS form keeps P^T in registers, and one
  // swizzle row stands in (the struct keeps one layout; a 1 KB-aligned offset is all the SS form needs of it).
  uint16_t p[C::kRsDkv ? kColBlock : C::kBlockN * C::kBlockM];
  float lse[C::kStages][C::kBlockM];     // the forward's lse rows of the tile (natural log), by TMA; rows past
                                         // seqlen_q hold other rows' values or 0: the mask covers them
  float delta[C::kStages][C::kBlockM];   // rowsum(dO * O) - dlse, likewise; the consumers zero the rows past
                                         // seqlen_q (dS = 0 x (dP - delta) must not see another row's inf)
  uint64_t full[C::kStages];             // producer -> consumers: Q, dO, LSE, delta landed (1 arrival + TMA bytes)
  uint64_t empty[C::kStages];            // consumers -> producer: every consumer warp is done with the stage
  uint64_t kv_full;                      // K and V of the current work item landed
  uint64_t kv_empty;                     // every consumer warp is done with the item's K and V
  uint64_t tile_full[kTileSlots];        // dynamic schedule: item indices, producer -> consumers (tile_handoff.cuh)
  uint64_t tile_empty[kTileSlots];
  int tile[kTileSlots];
  DqTurn dq_turn[C::kConsumers];         // deterministic by TMA: each consumer's thread 0 (bwd_sm90_dq.cuh)
};

template <class C>
constexpr bool smem_layout_ok() {
  using S = SharedStorage<C>;
  return offsetof(S, k) % kSmemAlign == 0 && offsetof(S, v) % kSmemAlign == 0 && offsetof(S, q) % kSmemAlign == 0 &&
         offsetof(S, dout) % kSmemAlign == 0 && offsetof(S, p) % kSmemAlign == 0 &&
         offsetof(S, ds) % kSmemAlign == 0 && offsetof(S, dq) % kSmemAlign == 0 &&
         offsetof(S, lse) % kTmaSmemAlign == 0 &&
         offsetof(S, delta) % kTmaSmemAlign == 0 && C::kRowStatBytes % kTmaSmemAlign == 0 &&
         C::kKColBlockBytes % kSmemAlign == 0 &&
         C::kQColBlockBytes % kSmemAlign == 0;
}

// The dynamic shared-memory base is only 16-byte aligned by contract: ask for kSmemAlign more and round up.
template <class C>
constexpr int smem_bytes() {
  return static_cast<int>(sizeof(SharedStorage<C>)) + kSmemAlign;
}

// ---------------------------------------------------------------------------------------------------------------
// Column pieces: a consumer's kCols head-dim columns starting at c0 = part * kCols, cut at every 64-column block
// boundary. Each piece is one MN-major wgmma operand inside one column block (N = 32 or 64), and the pieces'
// accumulators concatenate: the accumulator layout is blockwise in 8 columns, so piece p's registers are
// acc[(start_p - c0) / 2 ...] with the same (thread, register) -> column formula as one wide accumulator.
__host__ __device__ constexpr int piece_count(int c0, int cols) {
  int n = 0;
  for (int c = c0; c < c0 + cols; ++n) {
    const int end = (c / kColBlock + 1) * kColBlock;
    c = end < c0 + cols ? end : c0 + cols;
  }
  return n;
}
__host__ __device__ constexpr int piece_start(int c0, int cols, int p) {
  int c = c0;
  for (int i = 0; i < p; ++i) {
    const int end = (c / kColBlock + 1) * kColBlock;
    c = end < c0 + cols ? end : c0 + cols;
  }
  return c;
}
__host__ __device__ constexpr int piece_width(int c0, int cols, int p) {
  const int start = piece_start(c0, cols, p);
  const int end = (start / kColBlock + 1) * kColBlock;
  return (end < c0 + cols ? end : c0 + cols) - start;
}

}  // namespace flashcore::sm90::bwd
