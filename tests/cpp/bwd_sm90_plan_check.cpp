// Brute-force check of csrc/cuda/bwd_sm90_plan.h (the sm_90a backward's tile plan), compiled by
// tests/test_bwd_sm90_plan.py with g++ and run on the CPU. Every check compares the plan's closed forms with an
// enumeration of (query, key) pairs on small shapes. Prints "ok <counts>" and exits 0, or prints the first failure
// and exits 1.
#include <cstdio>
#include <cstdlib>
#include <set>
#include <tuple>
#include <vector>

#include "cuda/bwd_sm90_plan.h"

using namespace flashcore::sm90::bwd;

namespace {

long g_checks = 0;

#define CHECK(cond, ...)                                 \
  do {                                                   \
    ++g_checks;                                          \
    if (!(cond)) {                                       \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                          \
      std::printf("\n");                                 \
      std::exit(1);                                      \
    }                                                    \
  } while (0)

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Tile-level facts for one geometry and tile shape, against brute force.
void check_geometry(const SeqGeom& g, int bm, int bn) {
  const int m_tiles = ceil_div(g.seqlen_q, bm), n_blocks = ceil_div(g.seqlen_k, bn);
  // contributes[m][n]: some visible pair has its query in tile m and its key in block n.
  std::vector<std::vector<char>> contributes(m_tiles, std::vector<char>(n_blocks, 0));
  for (int i = 0; i < g.seqlen_q; ++i)
    for (int j = 0; j < g.seqlen_k; ++j)
      if (visible(g, i, j)) contributes[i / bm][j / bn] = 1;

  for (int n = 0; n < n_blocks + 2; ++n) {  // +2: blocks past the sequence visit nothing
    const Range r = query_tile_range(g, n, bm, bn);
    for (int m = 0; m < m_tiles; ++m) {
      const bool visited = r.begin <= m && m < r.end;
      const bool needed = n < n_blocks && contributes[m][n];
      // No contributing pair skipped, no fully masked tile visited.
      CHECK(visited == needed, "sq=%d sk=%d wl=%d wr=%d bm=%d bn=%d m=%d n=%d visited=%d needed=%d", g.seqlen_q,
            g.seqlen_k, g.window_left, g.window_right, bm, bn, m, n, visited, needed);
      if (!visited) continue;
      // The converse range agrees (the deterministic ranks rely on it).
      const Range kr = key_block_range(g, m, bm, bn);
      CHECK(kr.begin <= n && n < kr.end, "key_block_range(m=%d) = [%d, %d) misses n=%d", m, kr.begin, kr.end, n);
      // A tile the plan does not mask really is fully visible (every row a query, every key of the block).
      if (!tile_needs_mask(g, m, n, bm, bn)) {
        for (int i = m * bm; i < (m + 1) * bm; ++i)
          for (int j = n * bn; j < (n + 1) * bn; ++j)
            CHECK(visible(g, i, j), "unmasked tile m=%d n=%d hides pair (%d, %d)", m, n, i, j);
      }
      // The kernel's int32 per-tile mask equals visible() on every element a consumer evaluates: 64-key
      // groups of the block, any 32-aligned first query column.
      for (int key0 = n * bn; key0 < (n + 1) * bn; key0 += 64) {
        for (int q0 = m * bm; q0 < (m + 1) * bm; q0 += 32) {
          const TileMask tm = tile_mask(g, q0, key0);
          for (int row = 0; row < 64; ++row)
            for (int col = 0; col < 64; ++col) {
              CHECK(tm.visible(row, col) == visible(g, q0 + col, key0 + row), "tile mask at q=%d k=%d", q0 + col,
                    key0 + row);
            }
        }
      }
    }
  }
  // key_block_range holds exactly the contributing blocks.
  for (int m = 0; m < m_tiles + 1; ++m) {
    const Range kr = key_block_range(g, m, bm, bn);
    for (int n = 0; n < n_blocks; ++n) {
      const bool in = kr.begin <= n && n < kr.end;
      CHECK(in == (m < m_tiles && contributes[m][n]), "key_block_range(m=%d) n=%d", m, n);
    }
  }
}

// Persistent schedule and the deterministic order, simulated: CTAs run their items in order, each item its
// query tiles in order; a tile's dQ add waits until its semaphore equals the block's rank. Checks: every item is
// run once; the simulation never gets stuck (no deadlock) for any grid size; each tile's adds come in increasing
// block order (a fixed total order, so the fp32 sums are bit-identical run to run).
void check_schedule(const std::vector<SeqGeom>& seqs, int heads_kv, int group, int bm, int bn, int grid) {
  int max_sk = 0, max_sq = 0;
  for (const SeqGeom& g : seqs) max_sk = std::max(max_sk, g.seqlen_k), max_sq = std::max(max_sq, g.seqlen_q);
  WorkGrid w{ceil_div(max_sk, bn), heads_kv, static_cast<int32_t>(seqs.size())};
  if (w.n_blocks == 0) return;
  const int64_t items = work_items(w);
  std::set<std::tuple<int, int, int>> seen;
  for (int64_t item = 0; item < items; ++item) {
    int32_t n, hk, b;
    decode_item(w, static_cast<int32_t>(item), n, hk, b);
    CHECK(n >= 0 && n < w.n_blocks && hk >= 0 && hk < heads_kv && b >= 0 && b < w.batch, "decode %ld", (long)item);
    CHECK(seen.insert({n, hk, b}).second, "item %ld decodes to a repeated (n, hk, b)", (long)item);
  }
  // Tasks of each CTA in program order: (item, hq, m).
  struct Task { int32_t n, hq, b, m, rank; };
  std::vector<std::vector<Task>> cta(grid);
  std::vector<int> runs(items, 0);
  for (int c = 0; c < grid; ++c)
    for (int64_t item = c; item < items; item += grid) {
      ++runs[item];
      int32_t n, hk, b;
      decode_item(w, static_cast<int32_t>(item), n, hk, b);
      const Range r = query_tile_range(seqs[b], n, bm, bn);
      for (int hq = hk * group; hq < (hk + 1) * group; ++hq)
        for (int m = r.begin; m < r.end; ++m) cta[c].push_back({n, hq, b, m, det_rank(seqs[b], m, n, bm, bn)});
    }
  for (int64_t item = 0; item < items; ++item) CHECK(runs[item] == 1, "item %ld run %d times", (long)item, runs[item]);
  const int m_tiles = ceil_div(max_sq, bm), heads_q = heads_kv * group;
  std::vector<int32_t> sem(static_cast<size_t>(w.batch) * heads_q * std::max(m_tiles, 1), 0);
  std::vector<std::vector<int32_t>> order(sem.size());
  std::vector<size_t> pc(grid, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int c = 0; c < grid; ++c) {
      while (pc[c] < cta[c].size()) {
        const Task& t = cta[c][pc[c]];
        const int64_t s = semaphore_index(t.b, t.hq, t.m, heads_q, m_tiles);
        if (sem[s] != t.rank) break;  // this CTA waits here
        ++sem[s];
        order[s].push_back(t.n);
        ++pc[c];
        progress = true;
      }
    }
  }
  for (int c = 0; c < grid; ++c)
    CHECK(pc[c] == cta[c].size(), "deadlock: CTA %d stuck at task %zu of %zu (grid %d)", c, pc[c], cta[c].size(), grid);
  for (size_t s = 0; s < order.size(); ++s)
    for (size_t k = 1; k < order[s].size(); ++k)
      CHECK(order[s][k] == order[s][k - 1] + 1, "tile %zu adds block %d after %d", s, order[s][k], order[s][k - 1]);
}

}  // namespace

int main() {
  const int lens[] = {0, 1, 2, 3, 5, 8, 17, 31, 64, 65, 130};
  const int windows[] = {-1, 0, 1, 3, 17, 70};
  const int tiles[][2] = {{4, 8}, {8, 4}, {64, 64}, {64, 128}};  // (block_m, block_n): small ones and the kernel's
  long geometries = 0;
  for (int sq : lens)
    for (int sk : lens)
      for (int wl : windows)
        for (int wr : windows)
          for (const auto& t : tiles) {
            check_geometry(SeqGeom{sq, sk, wl, wr}, t[0], t[1]);
            ++geometries;
          }
  // Bigger shapes at the kernel's tiles: causal, window, ragged, seqlen_q > seqlen_k.
  const int big[][4] = {{1000, 1000, -1, 0}, {1000, 4097, -1, 0}, {4097, 1000, -1, 0}, {777, 1500, 100, 50},
                        {2048, 2048, 255, 0}, {300, 300, -1, -1}};
  for (const auto& s : big)
    for (int bn : {64, 128}) check_geometry(SeqGeom{s[0], s[1], s[2], s[3]}, 64, bn);

  // Schedules: dense-like and varlen-like batches, GQA, every grid size from 1 up to past the item count.
  long schedules = 0;
  const std::vector<std::vector<SeqGeom>> batches = {
      {{130, 130, -1, 0}, {130, 130, -1, 0}},
      {{17, 200, -1, 0}, {0, 65, -1, 0}, {200, 17, -1, -1}, {65, 0, -1, -1}},
      {{300, 300, 40, 0}, {129, 257, 3, 70}}};
  for (const auto& seqs : batches)
    for (int group : {1, 3})
      for (int bn : {8, 64})
        for (int grid = 1; grid <= 40; grid += 3) {
          check_schedule(seqs, 2, group, bn == 8 ? 4 : 64, bn, grid);
          ++schedules;
        }
  std::printf("ok %ld geometries, %ld schedules, %ld checks\n", geometries, schedules, g_checks);
  return 0;
}
