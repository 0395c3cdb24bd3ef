// Which tiles the sm_90a attention backward visits, which of them need the mask, in what order the work items
// run and in what order the deterministic mode adds dQ: plain integer logic, __host__ __device__, no CUDA types,
// so that tests/test_bwd_sm90_plan.py compiles it with g++ and checks it against brute force on small shapes.
//
// Geometry (fwd_params.h): query i of a sequence sees key j when j < seqlen_k and
//   i + off - window_left <= j <= i + off + window_right,   off = seqlen_k - seqlen_q   (bottom-right aligned),
// a window side of -1 being unbounded. The kernel's work item is one K/V block of block_n keys of one (batch,
// K/V head); it streams the query tiles (block_m rows) that see at least one of its keys.
//
// Rows past seqlen_q inside the last query tile, and keys past seqlen_k inside the last K/V block, are masked like
// any invisible pair: a dense tensor map zero-fills them, but varlen reads the next sequence's rows (and their
// LSE), so the ragged tiles are always masked tiles.
#pragma once

#include <cstdint>

#include "tile_handoff.h"  // the dynamic assignment of the work order to CTAs (shared with the forward)

#if defined(__CUDACC__)
#define FC_BWD_HD __host__ __device__ __forceinline__
#else
#define FC_BWD_HD inline
#endif

namespace flashcore::sm90::bwd {

using sm90::claimed_tile;
using sm90::HandoffCursor;
using sm90::kNoTile;
using sm90::kTileSlots;
using sm90::static_next_tile;

// One sequence as the masks see it. Indices are computed in int64 so that off +- window cannot overflow.
struct SeqGeom {
  int32_t seqlen_q, seqlen_k;
  int32_t window_left, window_right;  // -1: unbounded (causal: window_right = 0)
};

struct Range {
  int32_t begin, end;  // [begin, end); empty when begin >= end
};

FC_BWD_HD int64_t geom_off(const SeqGeom& g) { return int64_t(g.seqlen_k) - g.seqlen_q; }
FC_BWD_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
FC_BWD_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Does query i see key j?
FC_BWD_HD bool visible(const SeqGeom& g, int64_t i, int64_t j) {
  if (i < 0 || i >= g.seqlen_q || j < 0 || j >= g.seqlen_k) return false;
  const int64_t o = geom_off(g);
  if (g.window_left >= 0 && j < i + o - g.window_left) return false;
  if (g.window_right >= 0 && j > i + o + g.window_right) return false;
  return true;
}

// Query tiles holding at least one query that sees a key of block n_block. The queries seeing some key of
// [j0, j1] form one interval (each query's window is an interval that slides right with i), so the tiles form one
// range and every tile in it contributes: none is visited fully masked.
FC_BWD_HD Range query_tile_range(const SeqGeom& g, int32_t n_block, int32_t block_m, int32_t block_n) {
  const int64_t j0 = int64_t(n_block) * block_n;
  if (g.seqlen_q <= 0 || j0 >= g.seqlen_k) return Range{0, 0};
  const int64_t j1 = min64(j0 + block_n, g.seqlen_k) - 1;
  const int64_t o = geom_off(g);
  const int64_t i_lo = g.window_right < 0 ? 0 : max64(0, j0 - o - g.window_right);
  const int64_t i_hi = g.window_left < 0 ? g.seqlen_q - 1 : min64(int64_t(g.seqlen_q) - 1, j1 - o + g.window_left);
  if (i_lo > i_hi) return Range{0, 0};
  return Range{static_cast<int32_t>(i_lo / block_m), static_cast<int32_t>(i_hi / block_m + 1)};
}

// The converse: K/V blocks holding at least one key that a query of tile m_tile sees. The deterministic mode
// orders a query tile's dQ contributions by block index inside this range (det_rank).
FC_BWD_HD Range key_block_range(const SeqGeom& g, int32_t m_tile, int32_t block_m, int32_t block_n) {
  const int64_t i0 = int64_t(m_tile) * block_m;
  if (g.seqlen_k <= 0 || i0 >= g.seqlen_q) return Range{0, 0};
  const int64_t i1 = min64(i0 + block_m, g.seqlen_q) - 1;
  const int64_t o = geom_off(g);
  const int64_t j_lo = g.window_left < 0 ? 0 : max64(0, i0 + o - g.window_left);
  const int64_t j_hi = g.window_right < 0 ? g.seqlen_k - 1 : min64(int64_t(g.seqlen_k) - 1, i1 + o + g.window_right);
  if (j_lo > j_hi) return Range{0, 0};
  return Range{static_cast<int32_t>(j_lo / block_n), static_cast<int32_t>(j_hi / block_n + 1)};
}

// Must the kernel mask (query, key) pairs of tile (m_tile, n_block)? False only when every row of the tile is a
// query below seqlen_q, every key of the block is below seqlen_k, and every such query sees every such key: then
// the mask is skipped (the common case of long sequences: only the diagonal / window-edge tiles and the last query
// tile and key block are masked).
FC_BWD_HD bool tile_needs_mask(const SeqGeom& g, int32_t m_tile, int32_t n_block, int32_t block_m, int32_t block_n) {
  const int64_t i0 = int64_t(m_tile) * block_m, i1 = i0 + block_m - 1;
  const int64_t j0 = int64_t(n_block) * block_n, j1 = j0 + block_n - 1;
  const int64_t o = geom_off(g);
  if (i1 >= g.seqlen_q || j1 >= g.seqlen_k) return true;
  if (g.window_left >= 0 && j0 < i1 + o - g.window_left) return true;   // the last row's left edge cuts the block
  if (g.window_right >= 0 && j1 > i0 + o + g.window_right) return true; // the first row's right edge cuts it
  return false;
}

constexpr int64_t kInt32Min = -2147483648LL, kInt32Max = 2147483647LL;

// visible(g, q0 + col, key0 + row) above for one tile of the kernel, in int32 and a handful of instructions per
// element: query q0 + col sees key key0 + row iff row < keys_left, col < queries_left and
// lo <= (key0 - q0) + row - col <= hi. tests/test_bwd_sm90_plan.py checks it against visible() for every element
// of every visited tile.
struct TileMask {
  int32_t keys_left;     // seqlen_k - key0: rows at or past it are keys past the sequence
  int32_t queries_left;  // seqlen_q - q0: columns at or past it are queries past the sequence
  int32_t lo, hi;        // bounds on key - query minus (key0 - q0); window sides clamped into int32
  FC_BWD_HD bool visible(int row, int col) const {
    const int32_t d = row - col;
    return row < keys_left && col < queries_left && d >= lo && d <= hi;
  }
};

FC_BWD_HD TileMask tile_mask(const SeqGeom& g, int32_t q0, int32_t key0) {
  const int64_t off = int64_t(g.seqlen_k) - g.seqlen_q, base = int64_t(key0) - q0;
  const int64_t lo = g.window_left < 0 ? kInt32Min : off - g.window_left - base;
  const int64_t hi = g.window_right < 0 ? kInt32Max : off + g.window_right - base;
  TileMask m;
  m.keys_left = g.seqlen_k - key0;
  m.queries_left = g.seqlen_q - q0;
  m.lo = static_cast<int32_t>(lo < kInt32Min ? kInt32Min : (lo > kInt32Max ? kInt32Max : lo));
  m.hi = static_cast<int32_t>(hi < kInt32Min ? kInt32Min : (hi > kInt32Max ? kInt32Max : hi));
  return m;
}

// Deterministic dQ: block n_block is the det_rank-th of the key_block_range(m_tile) blocks to add into tile
// m_tile's dQ accumulator. It waits until the tile's semaphore equals its rank, adds, then increments it.
FC_BWD_HD int32_t det_rank(const SeqGeom& g, int32_t m_tile, int32_t n_block, int32_t block_m, int32_t block_n) {
  return n_block - key_block_range(g, m_tile, block_m, block_n).begin;
}

// ---------------------------------------------------------------------------------------------------------------
// Work items and their order. Item = (n_block, kv_head, batch), n_block fastest: the CTAs running at the same time
// work on neighbouring key blocks of one head and read the same Q / dO tiles from L2. Causal: block 0 sees the
// most queries, so the longest items start first. Persistent grid, CTAs resident at once (grid <= SMs x
// ctas_per_sm). Dynamic schedule (the default, tile_handoff.h): CTA c runs item c, then items gridDim.x + k for
// the counter's old values k, i.e. greedy list scheduling of this order; static (FLASHCORE_SM90_STATIC_SCHEDULE=1,
// and single-wave grids): items c, c + grid, c + 2 grid, ...
// Deterministic mode, no deadlock under either: an item waits only for items of the same (kv_head, batch) with a
// smaller n_block (det_rank counts a query tile's contributing blocks in increasing n), i.e. a smaller item index.
// Indices are handed out in increasing order in time (the first wave all at once, then one claim at a time), and
// each CTA runs its indices in increasing order, so every smaller index was handed out before, to a running CTA.
// The smallest unfinished handed-out item therefore waits for nobody, and its CTA is on it (its earlier items are
// smaller, hence finished): it completes, and by induction all do. An item not yet handed out blocks no one (all
// waits point to smaller indices). tests/cpp/bwd_sm90_plan_check.cpp steps producer + consumer warps per CTA through
// random interleavings of claims to check it (and that every role of a CTA walks one sequence).
struct WorkGrid {
  int32_t n_blocks;  // ceil(max_seqlen_k / block_n)
  int32_t heads_kv, batch;
};

// The host refuses grids of 2^31 items or more (bwd_sm90.cu), so items are int32 on the device.
FC_BWD_HD int64_t work_items(const WorkGrid& w) { return int64_t(w.n_blocks) * w.heads_kv * w.batch; }

FC_BWD_HD void decode_item(const WorkGrid& w, int32_t item, int32_t& n_block, int32_t& kv_head, int32_t& batch) {
  n_block = item % w.n_blocks;
  const int32_t rest = item / w.n_blocks;
  kv_head = rest % w.heads_kv;
  batch = rest / w.heads_kv;
}

// Index of the semaphore of query tile m_tile of (batch, query head) in the deterministic mode's int32 array.
FC_BWD_HD int64_t semaphore_index(int32_t batch, int32_t head_q, int32_t m_tile, int32_t heads_q, int32_t m_tiles) {
  return (int64_t(batch) * heads_q + head_q) * m_tiles + m_tile;
}

}  // namespace flashcore::sm90::bwd
