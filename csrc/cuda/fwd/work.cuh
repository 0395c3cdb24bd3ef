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
  int v_clear_row;   // varlen: first row of the walk's first V tile past the sequence's end (consumer.cuh), else
                     // block_n
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
  w.v_clear_row = T::kBlockN;
  if (p.cu_seqlens_k != nullptr && w.span.first < w.span.end) {
    w.v_clear_row = min(T::kBlockN, seqlen_k - (w.span.end - 1) * T::kBlockN);
  }
  return w;
}

// ---- dynamic schedule hand-off (protocol: tile_handoff.h; ring and claims: tile_handoff.cuh)

// Producer: the tile after t, claimed (dynamic) or round-robin (static).
template <bool kDynamic>
__device__ __forceinline__ int claim_next_tile(const KernelArgs& a, int t) {
  return sm90::claim_next_tile<kDynamic>(a.tile_counter, t, a.order.num_tiles());
}

}  // namespace flashcore::sm90::fwd
