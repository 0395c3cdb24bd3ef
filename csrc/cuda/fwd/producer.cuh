// The producer of the sm_90a forward: one thread of warpgroup 0 walks the same tiles as the consumers and issues
// every TMA load; under the dynamic schedule it also claims the tiles and publishes each index to the consumers
// (work.cuh) before loading it. Per work tile: K and V tiles through the kStages ring (separate full/empty
// barriers for K and V, so a consumer can release K once S = Q K^T is done and V once O += P V is), and Q once,
// into a buffer the consumers free (q_empty) after their last S GEMM, or, where the output is staged in Q's buffer
// (D = 192, 256), after their output stores have read it.
// Key tiles are visited last-first: the tiles cut by the causal diagonal / the sequence end come first, so the
// masked ones are the first and the last of the walk, and the running max settles on the diagonal early.
#pragma once

#include "work.cuh"

namespace flashcore::sm90::fwd {

template <int D>
__device__ __forceinline__ void load_tile(uint8_t* dst, uint32_t panel_bytes, const CUtensorMap* map, uint64_t* bar,
                                          int row, int head, int batch) {
  using T = FwdTraits<D>;
#pragma unroll
  for (int panel = 0; panel < T::kPanels; ++panel) {
    ptx::tma_load_4d(dst + panel * panel_bytes, map, bar, panel * T::kPanelCols, row, head, batch);
  }
}

// The tile walk, compiled once per schedule so that each keeps only the loop state it needs: the producer runs in
// 24 registers, and carrying both the static walk's tile index and the hand-off cursor across the key loop spills.
template <int D, bool kDynamic>
__device__ __forceinline__ void produce_tiles(SharedStorage<D>& s, const CUtensorMap* tmap_q,
                                              const CUtensorMap* tmap_k, const CUtensorMap* tmap_v,
                                              const KernelArgs& a) {
  using T = FwdTraits<D>;
  using namespace ptx;
  // K/V tiles loaded so far: the ring stage and the parity of its lap follow from it. One register for both (the
  // consumers keep the pair): with the hand-off cursor, a separate stage and phase would no longer fit in 24.
  uint32_t kv_loads = 0;
  uint32_t q_phase = 0;   // parity of the Q buffer's use count (kItemPipeline: of the current buffer's)
  int q_buf = 0;          // kItemPipeline: the buffer of this item's Q (items alternate); else always 0
  HandoffCursor handoff;  // dynamic: the tile-index ring to the consumers (work.cuh)
  auto load_q = [&](const WorkTile& w) {
    mbarrier_wait(&s.q_empty[q_buf], q_phase ^ 1);
    mbarrier_arrive_expect_tx(&s.q_full[q_buf], T::kQBytes);
    load_tile<D>(s.q[q_buf], T::kQPanelBytes, tmap_q, &s.q_full[q_buf], w.q_start + w.row0, w.head, w.tma_batch);
    if constexpr (T::kQBuffers == 2) {
      q_buf ^= 1;
      if (q_buf == 0) q_phase ^= 1;
    } else {
      q_phase ^= 1;
    }
  };
  // The next tile is claimed once this one's loads are issued: the consumers are then still about kStages key
  // tiles from its end, which hides the claim's round trip, and the claim comes as late as it can to balance best.
  for (int t = blockIdx.x; t != kNoTile; t = claim_next_tile<kDynamic>(a, t)) {
    if constexpr (kDynamic) publish_tile(s, handoff, t);
    const WorkTile w = resolve_tile<D>(a, t);
    if (w.span.first == w.span.end) continue;  // consumers write zeros without loading anything
    // kItemPipeline: Q before the first K tile. The consumers need both at once (the previous item's tail turn issues
    // this item's first S); the buffer was freed by the item before the previous one, whose S GEMMs are done by now.
    if constexpr (T::kItemPipeline) load_q(w);
    bool q_issued = T::kItemPipeline;
#pragma unroll 1
    for (int kt = w.span.end - 1; kt >= w.span.first; --kt) {
      const int key_row = w.k_start + kt * T::kBlockN;
      const int stage = static_cast<int>(kv_loads % T::kStages);
      const uint32_t phase = (kv_loads / T::kStages) & 1u;
      mbarrier_wait(&s.k_empty[stage], phase ^ 1);  // lap 0 passes at once: a fresh barrier's "previous" phase
      mbarrier_arrive_expect_tx(&s.k_full[stage], T::kKvTileBytes);
      load_tile<D>(s.k[stage], T::kKvPanelBytes, tmap_k, &s.k_full[stage], key_row, w.head_kv, w.tma_batch);
      if (!q_issued) {  // after the first K tile, so that load overlaps the consumers' previous epilogue
        load_q(w);
        q_issued = true;
      }
      mbarrier_wait(&s.v_empty[stage], phase ^ 1);
      mbarrier_arrive_expect_tx(&s.v_full[stage], T::kKvTileBytes);
      load_tile<D>(s.v[stage], T::kKvPanelBytes, tmap_v, &s.v_full[stage], key_row, w.head_kv, w.tma_batch);
      ++kv_loads;
    }
  }
  if constexpr (kDynamic) publish_tile(s, handoff, kNoTile);  // the consumers' end of work
}

template <int D>
__device__ void produce(SharedStorage<D>& s, const CUtensorMap* tmap_q, const CUtensorMap* tmap_k,
                        const CUtensorMap* tmap_v, const KernelArgs& a) {
  ptx::prefetch_tensor_map(tmap_q);
  if (a.p.rows_k > 0) {  // no keys at all: the K/V maps were left unencoded (launch) and are never used
    ptx::prefetch_tensor_map(tmap_k);
    ptx::prefetch_tensor_map(tmap_v);
  }
  if (a.tile_counter != nullptr) {
    produce_tiles<D, true>(s, tmap_q, tmap_k, tmap_v, a);
  } else {
    produce_tiles<D, false>(s, tmap_q, tmap_k, tmap_v, a);
  }
}

}  // namespace flashcore::sm90::fwd
