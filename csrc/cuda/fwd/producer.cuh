// The producer of the sm_90a forward: one thread of warpgroup 0 walks the same tiles as the consumers and issues
// every TMA load. Per work tile: K and V tiles through the kStages ring (separate full/empty barriers for K and V,
// so a consumer can release K once S = Q K^T is done and V once O += P V is), and Q once, into a buffer the
// consumers free (q_empty) after their last S GEMM, or, where the output is staged in Q's buffer (D = 192, 256),
// after their output stores have read it.
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

template <int D>
__device__ void produce(SharedStorage<D>& s, const CUtensorMap* tmap_q, const CUtensorMap* tmap_k,
                        const CUtensorMap* tmap_v, const KernelArgs& a) {
  using T = FwdTraits<D>;
  using namespace ptx;
  prefetch_tensor_map(tmap_q);
  if (a.p.rows_k > 0) {  // no keys at all: the K/V maps were left unencoded (launch) and are never used
    prefetch_tensor_map(tmap_k);
    prefetch_tensor_map(tmap_v);
  }
  int stage = 0;
  uint32_t phase = 0, q_phase = 0;  // parities: the ring's lap, and the Q buffer's use count
  const int num_tiles = a.order.num_tiles();
  for (int t = blockIdx.x; t < num_tiles; t += gridDim.x) {
    const WorkTile w = resolve_tile<D>(a, t);
    if (w.span.first == w.span.end) continue;  // consumers write zeros without loading anything
    bool q_issued = false;
#pragma unroll 1
    for (int kt = w.span.end - 1; kt >= w.span.first; --kt) {
      const int key_row = w.k_start + kt * T::kBlockN;
      mbarrier_wait(&s.k_empty[stage], phase ^ 1);  // lap 0 passes at once: a fresh barrier's "previous" phase
      mbarrier_arrive_expect_tx(&s.k_full[stage], T::kKvTileBytes);
      load_tile<D>(s.k[stage], T::kKvPanelBytes, tmap_k, &s.k_full[stage], key_row, w.head_kv, w.tma_batch);
      if (!q_issued) {  // after the first K tile, so that load overlaps the consumers' previous epilogue
        mbarrier_wait(&s.q_empty, q_phase ^ 1);
        mbarrier_arrive_expect_tx(&s.q_full, T::kQBytes);
        load_tile<D>(s.q, T::kQPanelBytes, tmap_q, &s.q_full, w.q_start + w.row0, w.head, w.tma_batch);
        q_phase ^= 1;
        q_issued = true;
      }
      mbarrier_wait(&s.v_empty[stage], phase ^ 1);
      mbarrier_arrive_expect_tx(&s.v_full[stage], T::kKvTileBytes);
      load_tile<D>(s.v[stage], T::kKvPanelBytes, tmap_v, &s.v_full[stage], key_row, w.head_kv, w.tma_batch);
      if (++stage == T::kStages) stage = 0, phase ^= 1;
    }
  }
}

}  // namespace flashcore::sm90::fwd
