// What the kernel's threads agree on: the kernel arguments, the work tile (sequence, head, query rows, key tiles)
// behind a linear tile index of the persistent schedule (schedule.h), and the hand-off of those indices from the
// producer thread to the consumers under the dynamic schedule. The producer thread and every consumer thread call
// resolve_tile on the same index and get the same answer.
#pragma once

#include <cstdint>

#include "../../fwd_params.h"
#include "schedule.h"
#include "traits.cuh"

namespace flashcore::sm90::fwd {

struct KernelArgs {
  FwdParams p;
  TileOrder order;
  int q_per_kv;       // heads_q / heads_kv, divided on the host: a quotient the producer would hold in a register
  int* tile_counter;  // (1,) int32 zeroed before the launch: dynamic schedule; nullptr: static round-robin
};

struct WorkTile {
  bool valid;        // false: the block lies past this (shorter) sequence's end (varlen)
  int batch, head, head_kv;
  int row0;          // first query row of the CTA's block, within the sequence
  int q_start, k_start;  // row of the sequence's first query / key in the tensors (varlen), else 0
  int tma_batch;     // batch coordinate of the tensor maps: the sequence (dense) or 0 (varlen: one packed "batch")
  Band band;
  TileSpan span;     // key tiles to visit; empty: every row sees nothing (out 0, lse -inf)
};

template <int D>
__device__ __forceinline__ WorkTile resolve_tile(const KernelArgs& a, int t) {
  using T = FwdTraits<D>;
  const FwdParams& p = a.p;
  const TileCoord c = tile_at(a.order, t);
  WorkTile w;
  w.batch = c.pair / p.heads_q;
  w.head = c.pair - w.batch * p.heads_q;
  w.head_kv = w.head / a.q_per_kv;  // GQA/MQA: a group of query heads reads one K/V head, no copies
  int seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k;
  w.q_start = 0, w.k_start = 0, w.tma_batch = w.batch;
  if (p.cu_seqlens_q != nullptr) {
    w.q_start = __ldg(p.cu_seqlens_q + w.batch);
    seqlen_q = __ldg(p.cu_seqlens_q + w.batch + 1) - w.q_start;
    w.k_start = __ldg(p.cu_seqlens_k + w.batch);
    seqlen_k = __ldg(p.cu_seqlens_k + w.batch + 1) - w.k_start;
    w.tma_batch = 0;
  }
  const int m_blocks = ceil_div(seqlen_q, T::kBlockM);
  w.valid = c.m_rev < m_blocks;
  w.row0 = (m_blocks - 1 - c.m_rev) * T::kBlockM;
  w.band = Band{seqlen_q, seqlen_k, p.window_left, p.window_right};
  w.span = w.valid ? key_tiles(w.band, w.row0, T::kBlockM, T::kBlockN) : TileSpan{0, 0};
  return w;
}

// ---- dynamic schedule hand-off (protocol and its CPU check: schedule.h)

// Producer: the tile after t. Dynamic: a claim on the counter, a relaxed atomic (only the values' uniqueness
// matters: the tiles' data moves through TMA and mbarriers). Static: the round-robin successor.
template <bool kDynamic>
__device__ __forceinline__ int claim_next_tile(const KernelArgs& a, int t) {
  const int num_tiles = a.order.num_tiles();
  if constexpr (kDynamic) return claimed_tile(atomicAdd(a.tile_counter, 1), static_cast<int>(gridDim.x), num_tiles);
  return static_next_tile(t, static_cast<int>(gridDim.x), num_tiles);
}

// Producer: hand tile t (or kNoTile) to the consumers. The slot is free once every consumer warp read its previous
// index (a fresh ring passes at once: parity of the "previous" phase); the full arrival releases the store.
template <int D>
__device__ __forceinline__ void publish_tile(SharedStorage<D>& s, HandoffCursor& c, int t) {
  ptx::mbarrier_wait(&s.tile_empty[c.slot()], c.phase() ^ 1);
  s.tile[c.slot()] = t;
  ptx::mbarrier_arrive(&s.tile_full[c.slot()]);
  c.advance();
}

// Consumer warp: the next tile index the producer published. Every lane reads it; __syncwarp orders all 32 reads
// before lane 0's arrival frees the slot. The broadcast from lane 0 tells ptxas the value is warp-uniform (the
// loops holding the wgmmas depend on it: a branch it thinks divergent serializes them, warning C7520).
template <int D>
__device__ __forceinline__ int take_tile(SharedStorage<D>& s, HandoffCursor& c, int lane) {
  ptx::mbarrier_wait(&s.tile_full[c.slot()], c.phase());
  const int t = s.tile[c.slot()];
  __syncwarp();
  if (lane == 0) ptx::mbarrier_arrive(&s.tile_empty[c.slot()]);
  c.advance();
  return __shfl_sync(frag::kFullWarpMask, t, 0);
}

}  // namespace flashcore::sm90::fwd
