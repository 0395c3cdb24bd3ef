// Exhaustive CPU check of csrc/cuda/fwd/schedule.h against brute force; run by tests/test_fwd_sm90_schedule.py.
// Prints one line per failure (at most a few) and "checked N cases" at the end; exit status 1 on any failure.
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <vector>

#include "cuda/fwd/schedule.h"

using namespace flashcore::sm90::fwd;

static long failures = 0, cases = 0, handoff_runs = 0;

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
    // The kernel splits a CTA block into 2 or 3 consumer parts that walk the CTA's span but mask per part.
    for (int parts = 2; parts <= 3; ++parts) {
      if (block_m % parts != 0) continue;
      const int part = block_m / parts;
      for (int h = 0; h < parts; ++h) {
        const int r0 = row0 + h * part;
        for (int t = span.first; t < span.end; ++t) {
          if (!tile_unmasked(band, r0, part, t * block_n, block_n)) continue;
          for (int r = r0; r < r0 + part && r < sq; ++r)
            for (int j = t * block_n; j < (t + 1) * block_n; ++j)
              EXPECT(brute_visible(sq, sk, wl, wr, r, j), "part %d/%d tile %d unmasked but (%d, %d) invisible", h,
                     parts, t, r, j);
        }
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


// ---------------------------------------------------------------------------------------------------------------
// The dynamic schedule's hand-off (schedule.h), modelled: per CTA one producer and 4 warps per consumer warpgroup
// (2 warpgroups, or 3 at D = 64: FwdTraits::kConsumerWarps = 8 or 12, each warp arrives on its own), each a state
// machine doing what producer.cuh / consumer.cuh / work.cuh do with the barriers (tile-index ring, Q buffer, K and V
// rings, the consumers' ping-pong named barriers, the epilogue's), stepped in a random interleaving over all CTAs;
// also as built with -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (two Q buffers, Q loaded before an item's first K, and the
// turn of an item's last P V issuing the next item's first S, sought before that turn);
// counter claims happen whenever a producer gets to them. mbarriers follow the PTX rule (a wait names a parity;
// "done" when the barrier's phase parity differs) and every wait also checks the absolute phase it means, so a role
// lapping another is caught, not aliased.
constexpr int kWarpsPerGroup = 4;    // warps of a warpgroup
constexpr int kMaxConsumers = 3;     // FwdTraits: 2 or 3 consumer warpgroups

struct MBar {
  int count = 1, pending = 1;
  uint32_t phase = 0;  // completed phases
  void init(int n) { count = pending = n, phase = 0; }
  void arrive() {
    if (--pending == 0) pending = count, ++phase;
  }
  // try_wait.parity: phase `parity` counts as complete when the current phase's parity differs. `lap` is the
  // absolute phase the caller means (it waits for lap phases to have completed): the parity answer must agree.
  bool ready(uint32_t parity, uint32_t lap, const char* what) {
    const bool ptx_says = (phase & 1u) != parity;
    const bool meant = phase >= lap;
    EXPECT(ptx_says == meant && phase <= lap + 1, "%s: parity wait disagrees (phase %u, parity %u, lap %u)", what,
           phase, parity, lap);
    return ptx_says;
  }
};

// A named barrier of the consumers' ping-pong (consumer.cuh sched_wait / sched_pass), counted in warps: a phase
// completes with the 4 warps of its consumer waiting (bar.sync) and the 4 of the previous consumer passing
// (bar.arrive). More of either in one phase is a pass piling onto a pending phase (the hardware would complete it
// with the wrong warps).
struct NamedBar {
  int syncs = 0, arrives = 0, gen = 0;
  void add(bool sync) {
    (sync ? syncs : arrives)++;
    EXPECT(syncs <= kWarpsPerGroup && arrives <= kWarpsPerGroup, "ping-pong barrier: %d waits, %d passes in a phase",
           syncs, arrives);
    if (syncs + arrives == 2 * kWarpsPerGroup) syncs = arrives = 0, ++gen;
  }
};

struct Cta {
  MBar tile_full[kTileSlots], tile_empty[kTileSlots], q_full[2], q_empty[2];  // Q: one buffer, or two (pipelined)
  std::vector<MBar> k_full, k_empty, v_full, v_empty;
  int tile[kTileSlots] = {};
  int epi_arrived[kMaxConsumers] = {}, epi_gen[kMaxConsumers] = {};  // per consumer: the epilogue's named barrier
  NamedBar sched[kMaxConsumers];  // per consumer: "it may issue its GEMMs now"
  std::vector<int> grants;        // consumers in the order their turns opened (a phase of their barrier completed)
};

struct Role {  // a producer (warp < 0) or a consumer warp; a program counter and the loop state of that code
  int cta, warp, pc = 0;
  int t = 0, kt = 0, span = 0, v_stage = 0, turns = 0, epi_gen = 0;
  int turn_site = 0, sched_gen = 0;  // consumer: which GEMM batch its pending turn issues; the phase it waits on
  uint32_t kv = 0, v_phase = 0;
  uint32_t q_uses = 0;  // Q loads (producer) or items whose Q is done (consumer) so far: buffer and lap (q_buf, q_lap)
  int t_done = 0;       // pipelined consumer: the item whose epilogue follows the merged tail turn
  bool tail_pending = false;  // pipelined consumer: seeking the next item before the current one's tail turn
  HandoffCursor handoff;
  std::vector<int> seq;  // tiles published (producer) or taken (consumer), kNoTile last
  bool done = false;
};

struct HandoffModel {
  int grid, num_tiles, stages, consumers;
  bool dynamic;
  bool q_after_epilogue;  // D = 192 / 256: Q is freed by each consumer's thread 0 after its store, not per warp
  bool pipelined;         // -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (needs the separate output: !q_after_epilogue)
  std::vector<int> spans;          // key tiles of each work tile (0: empty, zeros written, nothing loaded)
  int counter = 0;
  std::vector<Cta> ctas;
  std::vector<Role> roles;
  std::vector<int> runs;  // per tile: consumer warps that ran it

  int warps() const { return consumers * kWarpsPerGroup; }  // FwdTraits::kConsumerWarps
  int q_empty_arrivals() const { return q_after_epilogue ? consumers : warps(); }
  int group(const Role& r) const { return r.warp / kWarpsPerGroup; }
  // The Q buffer of the uses-th item and how many times it was used before (its barriers' absolute phase).
  int q_buf(uint32_t uses) const { return pipelined ? static_cast<int>(uses & 1u) : 0; }
  uint32_t q_lap(uint32_t uses) const { return pipelined ? uses >> 1 : uses; }
  bool q_full_ready(Cta& c, uint32_t uses) {
    return c.q_full[q_buf(uses)].ready(q_lap(uses) & 1u, q_lap(uses) + 1, "q_full");
  }
  // A consumer warp is done with its current item's Q (after the item's last S; or, q_after_epilogue, its store).
  void q_release(Cta& c, Role& r) {
    c.q_empty[q_buf(r.q_uses)].arrive();
    if (pipelined) r.q_uses++;
  }

  // sched_wait, first half: this warp's bar.sync joins its consumer's barrier (a step), then waits for the phase.
  void sched_join(Role& r, int resume) {
    Cta& c = ctas[r.cta];
    NamedBar& b = c.sched[group(r)];
    r.sched_gen = b.gen;
    b.add(true);
    if (b.gen != r.sched_gen) c.grants.push_back(group(r));  // this warp completed the phase
    r.pc = resume;
  }
  bool sched_released(const Role& r) { return ctas[r.cta].sched[group(r)].gen != r.sched_gen; }
  void sched_pass(Role& r) {
    Cta& c = ctas[r.cta];
    const int next = (group(r) + 1) % consumers;
    NamedBar& b = c.sched[next];
    const int gen = b.gen;
    b.add(false);
    if (b.gen != gen) c.grants.push_back(next);
  }
  int next_static(int t) const { return static_next_tile(t, grid, num_tiles); }
  // The epilogue's named barrier over the consumer's 4 warps (bar.sync, epilogue.cuh): this warp joins; it passes
  // once epi_gen moves on.
  void epilogue_join(Cta& c, Role& r) {
    r.epi_gen = c.epi_gen[group(r)];
    if (++c.epi_arrived[group(r)] == kWarpsPerGroup) c.epi_arrived[group(r)] = 0, ++c.epi_gen[group(r)];
  }
  // Where a consumer goes once its item's key walk is issued: the tail turn; pipelined, first the next item (9: take
  // the next index, then seek on from case 2).
  int walk_end(Role& r) {
    if (!pipelined) return 7;
    r.tail_pending = true, r.t_done = r.t;
    return 9;
  }
  // The item's first S completed (the prologue's turn or the merged tail's): K free, Q too if it is the only tile.
  void first_s_done(Cta& c, Role& r) {
    const int stage = static_cast<int>(r.kv % stages);
    c.k_empty[stage].arrive();
    if (!q_after_epilogue && r.span == 1) q_release(c, r);
    r.v_stage = stage, r.v_phase = r.kv / stages;
    ++r.kv, r.kt = 1;
    r.pc = r.kt < r.span ? 5 : walk_end(r);
  }

  // One step of role r if it can make one; false when it is blocked on a barrier.
  bool step(Role& r) {
    Cta& c = ctas[r.cta];
    const int stage = static_cast<int>(r.kv % stages);
    const uint32_t lap = r.kv / stages;  // completed laps of the K/V ring before this load
    if (r.warp < 0) {  // ---------------- producer
      switch (r.pc) {
        case 0: r.t = r.cta; r.pc = dynamic ? 1 : 3; return true;
        case 1:  // publish_tile: wait for the slot's previous use to be read by every consumer warp
          if (!c.tile_empty[r.handoff.slot()].ready(r.handoff.phase() ^ 1, r.handoff.passed / kTileSlots,
                                                    "tile_empty"))
            return false;
          c.tile[r.handoff.slot()] = r.t;
          c.tile_full[r.handoff.slot()].arrive();
          r.handoff.advance();
          r.seq.push_back(r.t);
          r.pc = 2;
          return true;
        case 2: if (r.t == kNoTile) { r.done = true; return true; } r.pc = 3; return true;
        case 3:
          if (!dynamic) r.seq.push_back(r.t);
          if (r.t == kNoTile) { r.done = true; return true; }
          r.span = spans[r.t], r.kt = 0;
          r.pc = r.span == 0 ? 8 : pipelined ? 5 : 4;
          return true;
        case 4:  // K tile kt
          if (!c.k_empty[stage].ready((lap & 1u) ^ 1u, lap, "k_empty")) return false;
          c.k_full[stage].arrive();
          r.pc = r.kt == 0 && !pipelined ? 5 : 6;
          return true;
        case 5: {  // Q, after the first K (pipelined: before it)
          const uint32_t q_lap_now = q_lap(r.q_uses);
          if (!c.q_empty[q_buf(r.q_uses)].ready((q_lap_now & 1u) ^ 1u, q_lap_now, "q_empty")) return false;
          c.q_full[q_buf(r.q_uses)].arrive();
          r.q_uses++;
          r.pc = pipelined ? 4 : 6;
          return true;
        }
        case 6:  // V tile kt
          if (!c.v_empty[stage].ready((lap & 1u) ^ 1u, lap, "v_empty")) return false;
          c.v_full[stage].arrive();
          ++r.kv;
          r.pc = ++r.kt < r.span ? 4 : 8;
          return true;
        case 8:  // claim the next tile: the interleaving decides which CTA's claim comes first
          r.t = dynamic ? claimed_tile(counter++, grid, num_tiles) : next_static(r.t);
          r.pc = dynamic ? 1 : 3;
          return true;
      }
    }
    // ---------------- consumer warp
    switch (r.pc) {
      case 0:  // the last consumer opens: consumer 0 issues first
        if (group(r) == consumers - 1) sched_pass(r);
        r.t = r.cta;
        r.pc = dynamic ? 1 : 2;
        return true;
      case 1:  // take_tile
        if (!c.tile_full[r.handoff.slot()].ready(r.handoff.phase(), r.handoff.passed / kTileSlots + 1, "tile_full"))
          return false;
        r.t = c.tile[r.handoff.slot()];
        c.tile_empty[r.handoff.slot()].arrive();
        r.handoff.advance();
        r.pc = 2;
        return true;
      case 2:
        r.seq.push_back(r.t);
        if (r.t == kNoTile) {
          if (r.tail_pending) { r.pc = 7; return true; }  // pipelined: the last item's tail turn alone
          r.pc = 11;
          return true;
        }
        if (spans[r.t] == 0) { ++runs[r.t]; r.pc = 9; return true; }  // store_empty_rows, no barrier
        if (r.tail_pending) { r.pc = 71; return true; }  // pipelined: the merged tail turn
        r.span = spans[r.t], r.kt = 0;
        r.pc = 3;
        return true;
      case 11:  // consumer 0 absorbs the last consumer's final pass
        if (group(r) == 0) { sched_join(r, 12); return true; }
        r.done = true;
        return true;
      case 3:  // prologue: Q, then S of the first key tile
        if (!q_full_ready(c, r.q_uses)) return false;
        r.pc = 4;
        return true;
      case 4:
        if (!c.k_full[stage].ready(lap & 1u, lap + 1, "k_full")) return false;
        r.turn_site = 4;
        sched_join(r, 10);
        return true;
      case 40:  // the prologue's turn: S of the first key tile
        ++r.turns;
        first_s_done(c, r);
        return true;
      case 5:  // loop: S of tile kt (stage) with P V of the previous one (v_stage)
        if (!c.k_full[stage].ready(lap & 1u, lap + 1, "k_full")) return false;
        r.pc = 6;
        return true;
      case 6:
        if (!c.v_full[r.v_stage].ready(r.v_phase & 1u, r.v_phase + 1, "v_full")) return false;
        r.turn_site = 6;
        sched_join(r, 10);
        return true;
      case 60:  // a loop turn: S of tile kt with P V of the previous one
        ++r.turns;
        c.k_empty[stage].arrive();
        if (!q_after_epilogue && r.kt == r.span - 1) q_release(c, r);
        c.v_empty[r.v_stage].arrive();
        r.v_stage = stage, r.v_phase = lap;
        ++r.kv;
        r.pc = ++r.kt < r.span ? 5 : walk_end(r);
        return true;
      case 7:  // tail: P V of the last tile, then the epilogue (pipelined: the last item's)
        if (!c.v_full[r.v_stage].ready(r.v_phase & 1u, r.v_phase + 1, "v_full")) return false;
        r.turn_site = 7;
        sched_join(r, 10);
        return true;
      case 70:
        ++r.turns;
        c.v_empty[r.v_stage].arrive();
        // The epilogue's named barrier over the consumer's 4 warps (bar.sync, epilogue.cuh) before its store.
        epilogue_join(c, r);
        r.pc = 8;
        return true;
      case 8:
        if (c.epi_gen[group(r)] == r.epi_gen) return false;
        if (pipelined) {  // the last item's epilogue (no next item: t is the sentinel)
          ++runs[r.t_done];
          r.pc = 11;
          return true;
        }
        if (q_after_epilogue && r.warp % kWarpsPerGroup == 0) c.q_empty[0].arrive();  // thread 0 of the consumer
        r.q_uses++;
        ++runs[r.t];
        r.pc = 9;
        return true;
      case 71:  // pipelined tail: the last V tile, the next item's Q and first K, then the turn issuing both GEMMs
        if (!c.v_full[r.v_stage].ready(r.v_phase & 1u, r.v_phase + 1, "v_full")) return false;
        r.pc = 72;
        return true;
      case 72:
        if (!q_full_ready(c, r.q_uses)) return false;
        r.pc = 73;
        return true;
      case 73:
        if (!c.k_full[stage].ready(lap & 1u, lap + 1, "k_full")) return false;
        r.turn_site = 73;
        sched_join(r, 10);
        return true;
      case 730:  // the merged turn: P V done, V free, the epilogue's barrier; its S completes under the epilogue
        ++r.turns;
        c.v_empty[r.v_stage].arrive();
        epilogue_join(c, r);
        r.pc = 74;
        return true;
      case 74:
        if (c.epi_gen[group(r)] == r.epi_gen) return false;
        ++runs[r.t_done];
        r.tail_pending = false;
        r.span = spans[r.t], r.kt = 0;
        first_s_done(c, r);
        return true;
      case 9:
        if (dynamic) { r.pc = 1; return true; }
        r.t = next_static(r.t);
        r.pc = 2;
        return true;
      case 10:  // sched_wait, second half: the turn opens when the phase completes; issue, then pass the turn on
        if (!sched_released(r)) return false;
        sched_pass(r);
        r.pc = r.turn_site * 10;
        return true;
      case 12:  // the final absorb
        if (!sched_released(r)) return false;
        r.done = true;
        return true;
    }
    return false;
  }

  // Runs to the end under the interleaving drawn from `seed`; false on a deadlock.
  bool run(uint64_t seed) {
    ctas.assign(grid, Cta{});
    for (Cta& c : ctas) {
      for (int i = 0; i < kTileSlots; ++i) c.tile_full[i].init(1), c.tile_empty[i].init(warps());
      for (int b = 0; b < 2; ++b) c.q_full[b].init(1), c.q_empty[b].init(q_empty_arrivals());
      for (auto* ring : {&c.k_full, &c.v_full, &c.k_empty, &c.v_empty}) {
        ring->assign(stages, MBar{});
        const int arrivals = ring == &c.k_full || ring == &c.v_full ? 1 : warps();
        for (MBar& b : *ring) b.init(arrivals);
      }
    }
    roles.clear();
    for (int cta = 0; cta < grid; ++cta)
      for (int w = -1; w < warps(); ++w) roles.push_back(Role{cta, w});
    runs.assign(num_tiles, 0);
    counter = 0;
    uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
    std::vector<int> live(roles.size());
    for (;;) {
      live.clear();
      for (size_t i = 0; i < roles.size(); ++i)
        if (!roles[i].done) live.push_back(static_cast<int>(i));
      if (live.empty()) return true;
      // Try the live roles from a random start: the first that can step does (a blocked role does not count).
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const size_t start = (x >> 33) % live.size();
      bool moved = false;
      for (size_t k = 0; k < live.size() && !moved; ++k) moved = step(roles[live[(start + k) % live.size()]]);
      if (!moved) return false;
    }
  }
};

static void check_handoff(int grid, int num_tiles, int stages, int consumers, bool dynamic, bool q_after_epilogue,
                          bool pipelined, int span_seed, uint64_t seed) {
  ++cases, ++handoff_runs;
  HandoffModel m{grid, num_tiles, stages, consumers, dynamic, q_after_epilogue, pipelined};
  const int warps = m.warps();
  for (int t = 0; t < num_tiles; ++t) {
    m.spans.push_back(static_cast<int>((t * 7 + span_seed * 3) % 5));  // 0..4 key tiles: some tiles empty
  }
  const bool finished = m.run(seed);
  EXPECT(finished, "deadlock: grid %d tiles %d stages %d consumers %d dynamic %d q_after_epilogue %d pipelined %d "
         "seed %llu", grid, num_tiles, stages, consumers, dynamic, q_after_epilogue, pipelined,
         static_cast<unsigned long long>(seed));
  if (!finished) return;
  std::vector<int> produced(num_tiles, 0);
  int turns[kMaxConsumers] = {-1, -1, -1};
  for (const Role& r : m.roles) {
    const Role& producer = m.roles[r.cta * (warps + 1)];
    // Every role of a CTA walks one sequence, ending in the sentinel; each consumer's warps take equal turns.
    EXPECT(r.seq == producer.seq && !r.seq.empty() && r.seq.back() == kNoTile,
           "cta %d warp %d walked another sequence (grid %d tiles %d dynamic %d)", r.cta, r.warp, grid, num_tiles,
           dynamic);
    if (r.warp < 0) {
      for (size_t i = 0; i + 1 < r.seq.size(); ++i) ++produced[r.seq[i]];
      EXPECT(r.seq.front() == r.cta || r.seq.front() == kNoTile, "cta %d did not start with its own tile", r.cta);
      for (int& tc : turns) tc = -1;
    } else {
      int& tc = turns[m.group(r)];
      if (tc < 0) tc = r.turns;
      EXPECT(tc == r.turns, "cta %d warp %d: %d turns, its warpgroup's others %d", r.cta, r.warp, r.turns, tc);
      if (r.warp == warps - 1) {
        for (int g = 1; g < consumers; ++g)
          EXPECT(turns[g] == turns[0], "cta %d: ping-pong turns %d (consumer %d) vs %d", r.cta, turns[g], g, turns[0]);
      }
    }
  }
  // The ping-pong: turns open in consumer order, cyclically, one more for consumer 0 (the final absorb), and every
  // named barrier ends with no arrival pending.
  for (int cta = 0; cta < grid; ++cta) {
    const Cta& c = m.ctas[cta];
    const int turns_each = m.roles[cta * (warps + 1) + 1].turns;
    EXPECT(static_cast<int>(c.grants.size()) == consumers * turns_each + 1, "cta %d: %zu turns opened, not %d + 1",
           cta, c.grants.size(), consumers * turns_each);
    for (size_t k = 0; k < c.grants.size(); ++k)
      EXPECT(c.grants[k] == static_cast<int>(k % consumers), "cta %d: turn %zu went to consumer %d", cta, k,
             c.grants[k]);
    for (int g = 0; g < consumers; ++g)
      EXPECT(c.sched[g].syncs == 0 && c.sched[g].arrives == 0 && c.epi_arrived[g] == 0,
             "cta %d: consumer %d's barriers end with %d waits, %d passes, %d epilogue arrivals pending", cta, g,
             c.sched[g].syncs, c.sched[g].arrives, c.epi_arrived[g]);
  }
  for (int t = 0; t < num_tiles; ++t) {
    EXPECT(produced[t] == 1, "tile %d handed out %d times (grid %d tiles %d dynamic %d)", t, produced[t], grid,
           num_tiles, dynamic);
    EXPECT(m.runs[t] == warps, "tile %d run by %d consumer warps, not %d", t, m.runs[t], warps);
  }
  if (dynamic) {
    EXPECT(m.counter == num_tiles, "counter ends at %d, not %d: one failed claim per CTA", m.counter, num_tiles);
  }
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
  const int lengths[] = {1, 17, 127, 128, 129, 177, 191, 193, 1000};
  for (int sq : lengths)
    for (int sk : lengths)
      for (int wl : {-1, 0, 64, 300})
        for (int wr : {-1, 0, 64}) {
          // 176: D = 128 under -DFLASHCORE_FWD_SM90_D128_N176 (key tiles wider than, and not aligned with, the blocks)
          for (int bn : {80, 96, 128, 176}) check_band(sq, sk, wl, wr, 128, bn);
          check_band(sq, sk, wl, wr, 192, 128);  // D = 64: 3 consumers
        }
  for (int m = 1; m <= 9; ++m)
    for (int pairs = 1; pairs <= 13; ++pairs)
      for (int g = 1; g <= pairs + 1; ++g) check_order(m, pairs, g < pairs ? g : pairs);
  EXPECT(heads_per_group(100, 30, 8) == 3 && heads_per_group(10, 30, 8) == 1 && heads_per_group(1000, 30, 8) == 8,
         "heads_per_group clamps");
  // The hand-off, under many interleavings: grids of 1..5 CTAs, one to several waves, both Q-release modes and the
  // pipelined build, 2 to 4
  // stages, 2 and 3 consumer warpgroups; the static walk through the same model (no hand-off) as the reference.
  for (int consumers = 2; consumers <= kMaxConsumers; ++consumers)
    for (int grid = 1; grid <= 5; ++grid)
      for (int num_tiles = grid; num_tiles <= grid + 13; num_tiles += 1 + grid / 2)
        for (int stages = 2; stages <= 4; ++stages)
          for (int q_mode = 0; q_mode <= 2; ++q_mode)  // Q freed after the last S, after the store; pipelined
            for (uint64_t seed = 0; seed < 40; ++seed) {
              if (stages == 4 && seed >= 10) break;  // 4 stages: D = 64 only, a lighter sweep
              const int spans = static_cast<int>(seed % 3);
              const bool q_after = q_mode == 1, pipelined = q_mode == 2;
              check_handoff(grid, num_tiles, stages, consumers, true, q_after, pipelined, spans, seed);
              if (seed < 4) check_handoff(grid, num_tiles, stages, consumers, false, q_after, pipelined, spans, seed);
            }
  EXPECT(claimed_tile(0, 4, 10) == 4 && claimed_tile(5, 4, 10) == 9 && claimed_tile(6, 4, 10) == kNoTile &&
             claimed_tile(2147483600, 132, 2147483647) == kNoTile,
         "claimed_tile bounds");
  EXPECT(static_next_tile(5, 4, 10) == 9 && static_next_tile(6, 4, 10) == kNoTile &&
             static_next_tile(2147483600, 132, 2147483647) == kNoTile,
         "static_next_tile bounds");
  std::printf("hand-off model: %ld interleaved runs\n", handoff_runs);
  std::printf("checked %ld cases, %ld failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
