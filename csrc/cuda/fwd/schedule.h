// Index math of the sm_90a attention forward that needs no GPU: which keys a block of query rows can see, which
// key tiles it must visit and which of those need a per-element mask, and the persistent tile scheduler's order.
// Plain C++ (__host__ __device__ under nvcc): tests/test_fwd_sm90_schedule.py compiles it with g++ and checks it
// exhaustively against brute force (csrc/cuda/fwd/schedule_check.cpp).
//
// Semantics (csrc/fwd_params.h): query row r of a sequence sees key j when
//   r + off - window_left <= j <= r + off + window_right,  off = seqlen_k - seqlen_q (bottom-right aligned),
// a side of -1 being unbounded, and 0 <= j < seqlen_k. Causal is window_right = 0.
#pragma once

#include <cstdint>

#include "../tile_handoff.h"  // FLASHCORE_HD; the dynamic assignment of this order to CTAs

namespace flashcore::sm90::fwd {

FLASHCORE_HD int imin(int a, int b) { return a < b ? a : b; }
FLASHCORE_HD int imax(int a, int b) { return a > b ? a : b; }
FLASHCORE_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

// The visible band of one sequence.
struct Band {
  int seqlen_q, seqlen_k;
  int window_left, window_right;  // -1: unbounded

  FLASHCORE_HD int offset() const { return seqlen_k - seqlen_q; }
  // First key row r sees, and one past its last; first >= end when it sees none. Both are non-decreasing in r,
  // which is what makes the block-level answers below exact with two evaluations.
  FLASHCORE_HD int first_key(int row) const {
    return window_left >= 0 ? imax(0, row + offset() - window_left) : 0;
  }
  FLASHCORE_HD int end_key(int row) const {
    return window_right >= 0 ? imin(seqlen_k, row + offset() + window_right + 1) : seqlen_k;
  }
  FLASHCORE_HD bool visible(int row, int key) const { return key >= first_key(row) && key < end_key(row); }
};

// Key tiles [first, end) that rows [row0, row0 + rows) must visit: exactly the tiles holding at least one key some
// valid row (< seqlen_q) sees. Why exact: a row's visible keys form an interval; consecutive rows' unclipped
// intervals [r + off - wl, r + off + wr] touch or overlap (both ends step by 1, width >= 1), so the union over the
// block is one interval, from first_key(row0) (rows before the first row that sees anything have first_key 0 when
// that row's is 0, see the exhaustive check) to end_key(last row). first == end: nothing to visit.
struct TileSpan {
  int first, end;
};
FLASHCORE_HD TileSpan key_tiles(const Band& b, int row0, int rows, int block_n) {
  const int last = imin(row0 + rows, b.seqlen_q) - 1;
  if (last < row0) return {0, 0};
  const int begin = b.first_key(row0), end = b.end_key(last);
  if (begin >= end) return {0, 0};
  return {begin / block_n, ceil_div(end, block_n)};
}

// True when rows [row0, row0 + rows) (those < seqlen_q) see every key of tile [k0, k0 + block_n): the tile then
// needs no per-element mask for them. Rows at or past seqlen_q are never stored, so they do not count. first_key is
// non-decreasing, so the last valid row decides the left edge; end_key likewise, so the first row decides the right.
FLASHCORE_HD bool tile_unmasked(const Band& b, int row0, int rows, int k0, int block_n) {
  const int last = imin(row0 + rows, b.seqlen_q) - 1;
  if (last < row0) return true;
  if (k0 + block_n > b.seqlen_k) return false;  // past the sequence: the keys there belong to no one
  return b.first_key(last) <= k0 && b.end_key(row0) >= k0 + block_n;
}

// ---------------------------------------------------------------------------------------------------------------
// Persistent tile scheduler. A work tile is (query block m, sequence b, query head h); the grid has min(tiles, SMs)
// CTAs. Static: CTA c runs tiles c, c + gridDim.x, ... (producer and consumers compute the same sequence, so no
// tile index needs passing between them); dynamic (below): CTAs claim tiles of the same order from a counter.
// Order of the linear index t:
//   * (b, h) pairs are cut into groups of heads_per_group consecutive pairs (query heads of one K/V head are
//     consecutive, GQA included), sized on the host so that a group's K and V fit in about half of L2: the ~132
//     tiles in flight then read K/V that L2 already holds;
//   * inside a group, t walks "reverse m" (m_rev = 0 is a sequence's LAST query block) slowest and the group's
//     pairs fastest: the tiles with the most keys under a causal mask start first (longest-processing-time first),
//     and the short ones fill the tail of the schedule.
// Varlen: m_blocks counts blocks of the longest sequence; a shorter sequence's block is m = its_blocks - 1 - m_rev,
// and m_rev >= its_blocks is an empty tile (skipped).
struct TileOrder {
  int m_blocks;         // query blocks of the longest sequence
  int pairs;            // batch * heads_q
  int heads_per_group;  // >= 1
  FLASHCORE_HD int num_tiles() const { return m_blocks * pairs; }
};

struct TileCoord {
  int m_rev;  // 0: the last query block of the sequence
  int pair;   // b * heads_q + h
};

FLASHCORE_HD TileCoord tile_at(const TileOrder& o, int t) {
  const int group_tiles = o.heads_per_group * o.m_blocks;
  const int group = t / group_tiles;
  const int first_pair = group * o.heads_per_group;
  const int pairs_here = imin(o.heads_per_group, o.pairs - first_pair);  // the last group may be smaller
  const int in_group = t - group * group_tiles;
  return {in_group / pairs_here, first_pair + in_group % pairs_here};
}

// Dynamic assignment of that order to CTAs (the default; the static round-robin above stays reachable): shared with
// the backward, tile_handoff.h. Checked on the CPU by tests/cpp/fwd_sm90_schedule_check.cpp (a model of the
// hand-off under arbitrary interleavings, with these functions and the PTX mbarrier's parity rule).
using sm90::claimed_tile;
using sm90::HandoffCursor;
using sm90::kNoTile;
using sm90::kTileSlots;
using sm90::static_next_tile;

// Pairs per group: as many as keep K and V of the group within `l2_budget` bytes, at least 1. kv_bytes_per_pair is
// the K+V bytes of one (sequence, K/V head) divided by the query heads sharing it.
inline int heads_per_group(int64_t l2_budget, int64_t kv_bytes_per_pair, int pairs) {
  const int64_t fit = kv_bytes_per_pair > 0 ? l2_budget / kv_bytes_per_pair : pairs;
  return static_cast<int>(fit < 1 ? 1 : (fit > pairs ? pairs : fit));
}

}  // namespace flashcore::sm90::fwd
