// Exhaustive CPU check of csrc/cuda/fwd/schedule.h against brute force; run by tests/test_fwd_sm90_schedule.py.
// Prints one line per failure (at most a few) and "checked N cases" at the end; exit status 1 on any failure.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/fwd/schedule.h"

using namespace flashcore::sm90::fwd;

static long failures = 0, cases = 0;

#define EXPECT(cond, ...)                          \
  do {                                             \
    if (!(cond)) {                                 \
      if (++failures <= 20) {                      \
        std::printf("FAIL %s: ", #cond);           \
        std::printf(__VA_ARGS__);                  \
        std::printf("\n");                         \
      }                                            \
    }                                              \
  } while (0)

// The semantics, written independently of Band: bottom-right aligned band, -1 unbounded.
static bool brute_visible(int sq, int sk, int wl, int wr, int r, int j) {
  if (j < 0 || j >= sk || r < 0 || r >= sq) return false;
  const int diag = r + sk - sq;
  if (wr >= 0 && j > diag + wr) return false;
  if (wl >= 0 && j < diag - wl) return false;
  return true;
}

static void check_band(int sq, int sk, int wl, int wr, int block_m, int block_n) {
  const Band band{sq, sk, wl, wr};
  for (int r = 0; r < sq; ++r)
    for (int j = -1; j <= sk; ++j)
      EXPECT(band.visible(r, j) == brute_visible(sq, sk, wl, wr, r, j), "sq %d sk %d wl %d wr %d r %d j %d", sq, sk,
             wl, wr, r, j);
  const int key_tiles_total = ceil_div(sk, block_n) + 1;
  for (int row0 = 0; row0 < sq + block_m; row0 += block_m) {
    ++cases;
    const TileSpan span = key_tiles(band, row0, block_m, block_n);
    EXPECT(span.first <= span.end && span.first >= 0, "span order sq %d sk %d row0 %d", sq, sk, row0);
    for (int t = 0; t < key_tiles_total; ++t) {
      bool any = false, all = true;
      for (int r = row0; r < row0 + block_m && r < sq; ++r) {
        for (int j = t * block_n; j < (t + 1) * block_n; ++j) {
          const bool v = brute_visible(sq, sk, wl, wr, r, j);
          any |= v;
          all &= v;
        }
      }
      const bool visited = t >= span.first && t < span.end;
      // No visible key missed, and no tile visited that holds nothing visible for the block's valid rows.
      EXPECT(visited == any, "tile %d visited %d but holds visible keys %d (sq %d sk %d wl %d wr %d row0 %d bm %d "
             "bn %d span %d..%d)", t, visited, any, sq, sk, wl, wr, row0, block_m, block_n, span.first, span.end);
      // Masking exactly on boundary tiles: unmasked <=> every (valid row, key) pair of the tile is visible.
      if (visited) {
        const bool unmasked = tile_unmasked(band, row0, block_m, t * block_n, block_n);
        EXPECT(unmasked == all, "tile %d unmasked %d but all-visible %d (sq %d sk %d wl %d wr %d row0 %d bm %d bn %d)",
               t, unmasked, all, sq, sk, wl, wr, row0, block_m, block_n);
      }
    }
    // The kernel splits a CTA block into two consumer halves that walk the CTA's span but mask per half.
    const int half = block_m / 2;
    for (int h = 0; h < 2 && half > 0; ++h) {
      const int r0 = row0 + h * half;
      for (int t = span.first; t < span.end; ++t) {
        if (!tile_unmasked(band, r0, half, t * block_n, block_n)) continue;
        for (int r = r0; r < r0 + half && r < sq; ++r)
          for (int j = t * block_n; j < (t + 1) * block_n; ++j)
            EXPECT(brute_visible(sq, sk, wl, wr, r, j), "half %d tile %d unmasked but (%d, %d) invisible", h, t, r, j);
      }
    }
  }
}

static void check_order(int m_blocks, int pairs, int group) {
  const TileOrder o{m_blocks, pairs, group};
  std::vector<int> seen(static_cast<size_t>(m_blocks) * pairs, 0);
  int prev_group = -1, prev_m_rev = -1;
  std::vector<int> group_done(static_cast<size_t>(pairs + group) / group + 1, 0);
  for (int t = 0; t < o.num_tiles(); ++t) {
    ++cases;
    const TileCoord c = tile_at(o, t);
    EXPECT(c.m_rev >= 0 && c.m_rev < m_blocks && c.pair >= 0 && c.pair < pairs, "tile %d -> (%d, %d) out of range", t,
           c.m_rev, c.pair);
    if (!(c.m_rev >= 0 && c.m_rev < m_blocks && c.pair >= 0 && c.pair < pairs)) continue;
    ++seen[static_cast<size_t>(c.m_rev) * pairs + c.pair];
    const int g = c.pair / group;
    // Groups are contiguous runs of the order, and inside a group the longest (smallest m_rev) come first.
    if (g != prev_group) {
      EXPECT(!group_done[g], "group %d resumed at tile %d (m_blocks %d pairs %d group %d)", g, t, m_blocks, pairs,
             group);
      if (prev_group >= 0) group_done[prev_group] = 1;
      prev_group = g, prev_m_rev = -1;
    }
    EXPECT(c.m_rev >= prev_m_rev, "m_rev decreases at tile %d (m_blocks %d pairs %d group %d)", t, m_blocks, pairs,
           group);
    prev_m_rev = c.m_rev;
  }
  for (size_t i = 0; i < seen.size(); ++i)
    EXPECT(seen[i] == 1, "work tile %zu scheduled %d times (m_blocks %d pairs %d group %d)", i, seen[i], m_blocks,
           pairs, group);
}

int main() {
  const int windows[] = {-1, 0, 1, 2, 5, 9, 40};
  const int shapes[][2] = {{8, 4}, {6, 5}, {4, 16}, {16, 3}};  // (block_m, block_n): even block_m for the halves
  for (int sq = 1; sq <= 24; ++sq)
    for (int sk = 0; sk <= 24; ++sk)
      for (int wl : windows)
        for (int wr : windows)
          for (const auto& s : shapes) check_band(sq, sk, wl, wr, s[0], s[1]);
  // Kernel-sized blocks on the lengths the GPU tests use.
  const int lengths[] = {1, 17, 127, 128, 129, 1000};
  for (int sq : lengths)
    for (int sk : lengths)
      for (int wl : {-1, 0, 64, 300})
        for (int wr : {-1, 0, 64})
          for (int bn : {80, 96, 128}) check_band(sq, sk, wl, wr, 128, bn);
  for (int m = 1; m <= 9; ++m)
    for (int pairs = 1; pairs <= 13; ++pairs)
      for (int g = 1; g <= pairs + 1; ++g) check_order(m, pairs, g < pairs ? g : pairs);
  EXPECT(heads_per_group(100, 30, 8) == 3 && heads_per_group(10, 30, 8) == 1 && heads_per_group(1000, 30, 8) == 8,
         "heads_per_group clamps");
  std::printf("checked %ld cases, %ld failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
