// Brute-force check of csrc/cuda/bwd_sm90_plan.h (the sm_90a backward's tile plan), compiled by
// tests/test_bwd_sm90_plan.py with g++ and run on the CPU. Every check compares the plan's closed forms with an
// enumeration of (query, key) pairs on small shapes. Prints "ok <counts>" and exits 0, or prints the first failure
// and exits 1.
#include <algorithm>
#include <cstdint>
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


// ---------------------------------------------------------------------------------------------------------------
// The kernel's roles under the dynamic schedule (tile_handoff.h), modelled: per CTA one producer and kWarps consumer
// warps, each a state machine doing what bwd_sm90_kernel.cuh does with its barriers (item-index ring, K/V barrier
// pair, the Q / dO stage ring, the consumers' per-tile named barrier, the deterministic semaphores in both forms),
// stepped in a random interleaving over all CTAs; counter claims happen whenever a producer gets to them.
// Where a tile overhangs its sequence's end, both consumers zero its rows and meet at a barrier before reading them
// (kBarKvZeroed once per item whose block holds the end, kBarStageZeroed per partial last query tile).
// Deterministic dQ, two forms (BwdConfig::kDqByTma): D = 256 waits for the turn with both consumers behind
// kBarDetGo and releases once behind kBarDetDone; by TMA, thread 0 of each consumer (warps 0 and 4) waits for
// the turn alone (the tile's semaphore counts both consumers of each earlier block), issues its adds and passes
// the turn on only before the next tile's kBarDsReady or at its exit (pass_dq_turn): the deferred release. mbarrier waits follow
// the PTX parity rule and also check the absolute phase they mean (a role lapping another is caught, not aliased).
constexpr int kWarps = 8;  // BwdConfig::kConsumerWarps: 2 consumer warpgroups x 4 warps

struct MBar {
  int count = 1, pending = 1;
  uint32_t phase = 0;  // completed phases
  void init(int n) { count = pending = n, phase = 0; }
  void arrive() {
    if (--pending == 0) pending = count, ++phase;
  }
  bool ready(uint32_t parity, uint32_t lap, const char* what) {
    const bool ptx_says = (phase & 1u) != parity;
    const bool meant = phase >= lap;
    CHECK(ptx_says == meant && phase <= lap + 1, "%s: parity wait disagrees (phase %u, parity %u, lap %u)", what,
          phase, parity, lap);
    return ptx_says;
  }
};

struct NamedBar {  // bar.sync over all consumer threads: generation changes when the kWarps-th warp arrives
  int arrived = 0, gen = 0;
  int arrive() {
    const int g = gen;
    if (++arrived == kWarps) arrived = 0, ++gen;
    return g;
  }
};

struct ModelCta {
  MBar tile_full[kTileSlots], tile_empty[kTileSlots], kv_full, kv_empty;
  std::vector<MBar> full, empty;
  int tile[kTileSlots] = {};
  NamedBar tile_bar, det_go, det_done, kv_zeroed, stage_zeroed;
};

struct ModelRole {  // a producer (warp < 0) or a consumer warp: program counter and the loop state of that code
  int cta = 0, warp = 0, pc = 0;
  int item = 0, n = 0, hk = 0, b = 0, hq = 0, m = 0, bar_gen = 0;
  int64_t turn_owed = -1;  // by TMA, an issuing warp: the semaphore it still has to release
  Range tiles{0, 0};
  uint32_t loads = 0, kv_uses = 0;
  HandoffCursor handoff;
  std::vector<int> seq;  // items published (producer) or taken (consumer), kNoTile last
  bool done = false;
};

struct ScheduleModel {
  const std::vector<SeqGeom>* seqs = nullptr;
  WorkGrid w{};
  int group = 1, bm = 1, bn = 1, grid = 1, stages = 2;
  bool dynamic = true, deterministic = true, dq_by_tma = false;
  int items = 0, counter = 0, heads_q = 0, m_tiles = 0;
  std::vector<ModelCta> ctas;
  std::vector<ModelRole> roles;
  std::vector<int> runs;                     // per item: consumer warps that took it
  std::vector<int32_t> sem;                  // deterministic semaphores
  std::vector<std::vector<int32_t>> adds;    // per semaphore: the blocks that added (by TMA: once per consumer)

  int releases_per_block() const { return dq_by_tma ? kWarps / 4 : 1; }  // kDqReleasesPerBlock: per consumer
  bool issuer(const ModelRole& r) const { return r.warp % 4 == 0; }  // holds thread 0 of its warpgroup
  void pass_turn(ModelRole& r) {  // pass_dq_turn: the adds complete, the release
    if (r.turn_owed >= 0) ++sem[r.turn_owed], r.turn_owed = -1;
  }

  int next_static(int item) const { return static_next_tile(item, grid, items); }
  bool last_tile(const ModelRole& r) const { return r.m + 1 == r.tiles.end && r.hq + 1 == (r.hk + 1) * group; }
  void next_tile(ModelRole& r) const {
    if (++r.m == r.tiles.end) r.m = r.tiles.begin, ++r.hq;
  }
  void decode(ModelRole& r) {
    decode_item(w, r.item, r.n, r.hk, r.b);
    r.tiles = query_tile_range((*seqs)[r.b], r.n, bm, bn);
  }

  bool step(ModelRole& r) {
    ModelCta& c = ctas[r.cta];
    const int stage = static_cast<int>(r.loads % stages);
    const uint32_t lap = r.loads / stages;
    if (r.warp < 0) {  // ---------------- producer (produce_items)
      switch (r.pc) {
        case 0: r.item = r.cta; r.pc = dynamic ? 1 : 3; return true;
        case 1:  // publish_tile
          if (!c.tile_empty[r.handoff.slot()].ready(r.handoff.phase() ^ 1, r.handoff.passed / kTileSlots,
                                                    "tile_empty"))
            return false;
          c.tile[r.handoff.slot()] = r.item;
          c.tile_full[r.handoff.slot()].arrive();
          r.handoff.advance();
          r.seq.push_back(r.item);
          r.pc = r.item == kNoTile ? 9 : 2;
          if (r.item == kNoTile) r.done = true;
          return true;
        case 3:
          r.seq.push_back(r.item);
          if (r.item == kNoTile) { r.done = true; return true; }
          [[fallthrough]];
        case 2:
          decode(r);
          r.pc = r.tiles.begin >= r.tiles.end ? 8 : 4;  // no query sees the block: no load, claim at once
          return true;
        case 4:  // K, V
          if (!c.kv_empty.ready((r.kv_uses & 1u) ^ 1u, r.kv_uses, "kv_empty")) return false;
          c.kv_full.arrive();
          ++r.kv_uses;
          r.hq = r.hk * group, r.m = r.tiles.begin;
          r.pc = 5;
          return true;
        case 5:  // one query tile's stage
          if (!c.empty[stage].ready((lap & 1u) ^ 1u, lap, "empty")) return false;
          c.full[stage].arrive();
          ++r.loads;
          r.pc = last_tile(r) ? 8 : 5;
          next_tile(r);
          return true;
        case 8:  // the claim, after the item's last loads
          r.item = dynamic ? claimed_tile(counter++, grid, items) : next_static(r.item);
          r.pc = dynamic ? 1 : 3;
          return true;
      }
      return false;
    }
    // ---------------- consumer warp (consume)
    switch (r.pc) {
      case 0: r.item = r.cta; r.pc = dynamic ? 1 : 2; return true;
      case 1:  // take_tile
        if (!c.tile_full[r.handoff.slot()].ready(r.handoff.phase(), r.handoff.passed / kTileSlots + 1, "tile_full"))
          return false;
        r.item = c.tile[r.handoff.slot()];
        c.tile_empty[r.handoff.slot()].arrive();
        r.handoff.advance();
        r.pc = 2;
        return true;
      case 2:
        r.seq.push_back(r.item);
        if (r.item == kNoTile) {  // the consumer's exit: pass_dq_turn<true>
          pass_turn(r);
          r.done = true;
          return true;
        }
        ++runs[r.item];
        decode(r);
        // Keys past the sequence: skipped; no query sees the block: dK = dV = 0 stored, no barrier either way.
        r.pc = r.n * bn >= (*seqs)[r.b].seqlen_k || r.tiles.begin >= r.tiles.end ? 20 : 3;
        return true;
      case 3:
        if (!c.kv_full.ready(r.kv_uses & 1u, r.kv_uses + 1, "kv_full")) return false;
        ++r.kv_uses;
        r.hq = r.hk * group, r.m = r.tiles.begin;
        r.pc = 4;
        if ((r.n + 1) * bn > (*seqs)[r.b].seqlen_k) {  // varlen: the block's K / V rows past the end zeroed
          r.bar_gen = c.kv_zeroed.arrive();             // kBarKvZeroed: both consumers
          r.pc = 14;
        }
        return true;
      case 14:
        if (c.kv_zeroed.gen == r.bar_gen) return false;
        r.pc = 4;
        return true;
      case 4:
        if (!c.full[stage].ready(lap & 1u, lap + 1, "full")) return false;
        if ((*seqs)[r.b].seqlen_q - r.m * bm < bm) {  // a sequence's partial last tile: Q / dO / delta zeroed
          r.bar_gen = c.stage_zeroed.arrive();         // kBarStageZeroed: both consumers
          r.pc = 15;
          return true;
        }
        [[fallthrough]];
      case 15:
        if (r.pc == 15 && c.stage_zeroed.gen == r.bar_gen) return false;
        pass_turn(r);  // by TMA: the previous tile's turn, before kBarDsReady
        r.bar_gen = c.tile_bar.arrive();  // kBarDsFree / kBarDsReady: both consumers, every tile
        r.pc = 5;
        return true;
      case 5:
        if (c.tile_bar.gen == r.bar_gen) return false;
        c.empty[stage].arrive();  // the dV / dK group done: the stage is free
        r.pc = !deterministic ? 10 : dq_by_tma ? 11 : 6;
        return true;
      case 11: {  // by TMA: thread 0 of each consumer waits for the turn, adds, and owes the release
        if (!issuer(r)) { r.pc = 10; return true; }
        const SeqGeom& g = (*seqs)[r.b];
        const int64_t s = semaphore_index(r.b, r.hq, r.m, heads_q, m_tiles);
        if (sem[s] < det_rank(g, r.m, r.n, bm, bn) * releases_per_block()) return false;
        adds[s].push_back(r.n);
        r.turn_owed = s;
        r.pc = 10;
        return true;
      }
      case 6: {  // thread 0 of consumer 0 spins until the tile's semaphore reaches this block's rank
        const SeqGeom& g = (*seqs)[r.b];
        const int64_t s = semaphore_index(r.b, r.hq, r.m, heads_q, m_tiles);
        if (r.warp == 0 && sem[s] < det_rank(g, r.m, r.n, bm, bn)) return false;
        r.bar_gen = c.det_go.arrive();
        r.pc = 7;
        return true;
      }
      case 7:
        if (c.det_go.gen == r.bar_gen) return false;
        r.bar_gen = c.det_done.arrive();  // adds, fence, kBarDetDone
        r.pc = 8;
        return true;
      case 8: {
        if (c.det_done.gen == r.bar_gen) return false;
        if (r.warp == 0) {  // the release
          const int64_t s = semaphore_index(r.b, r.hq, r.m, heads_q, m_tiles);
          adds[s].push_back(r.n);
          ++sem[s];
        }
        r.pc = 10;
        return true;
      }
      case 10:
        ++r.loads;
        if (last_tile(r)) {
          c.kv_empty.arrive();
          r.pc = 20;
        } else {
          next_tile(r);
          r.pc = 4;
        }
        return true;
      case 20:
        if (dynamic) { r.pc = 1; return true; }
        r.item = next_static(r.item);
        r.pc = 2;
        return true;
    }
    return false;
  }

  bool run(uint64_t seed) {
    items = static_cast<int>(work_items(w));
    heads_q = w.heads_kv * group;
    int max_sq = 0;
    for (const SeqGeom& g : *seqs) max_sq = std::max(max_sq, g.seqlen_q);
    m_tiles = std::max(ceil_div(max_sq, bm), 1);
    ctas.assign(grid, ModelCta{});
    for (ModelCta& c : ctas) {
      for (int i = 0; i < kTileSlots; ++i) c.tile_full[i].init(1), c.tile_empty[i].init(kWarps);
      c.kv_full.init(1), c.kv_empty.init(kWarps);
      c.full.assign(stages, MBar{}), c.empty.assign(stages, MBar{});
      for (MBar& m : c.full) m.init(1);
      for (MBar& m : c.empty) m.init(kWarps);
    }
    roles.clear();
    for (int cta = 0; cta < grid; ++cta)
      for (int wp = -1; wp < kWarps; ++wp) {
        ModelRole r;
        r.cta = cta, r.warp = wp;
        roles.push_back(r);
      }
    runs.assign(items, 0);
    sem.assign(static_cast<size_t>(w.batch) * heads_q * m_tiles, 0);
    adds.assign(sem.size(), {});
    counter = 0;
    uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
    std::vector<int> live;
    for (;;) {
      live.clear();
      for (size_t i = 0; i < roles.size(); ++i)
        if (!roles[i].done) live.push_back(static_cast<int>(i));
      if (live.empty()) return true;
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const size_t start = (x >> 33) % live.size();
      bool moved = false;
      for (size_t k = 0; k < live.size() && !moved; ++k) moved = step(roles[live[(start + k) % live.size()]]);
      if (!moved) return false;
    }
  }
};

long g_model_runs = 0;

// One interleaved run: no deadlock; every item handed out once and taken by all kWarps warps of one CTA; every role
// of a CTA walks the producer's sequence, ending in the sentinel, and starts with item cta; each query tile's dQ
// adds come from all its contributing blocks in increasing block order (deterministic), i.e. in rank order.
void check_model(const std::vector<SeqGeom>& seqs, int heads_kv, int group, int bm, int bn, int grid, int stages,
                 bool dynamic, bool dq_by_tma, uint64_t seed) {
  int max_sk = 0;
  for (const SeqGeom& g : seqs) max_sk = std::max(max_sk, g.seqlen_k);
  const WorkGrid w{ceil_div(max_sk, bn), heads_kv, static_cast<int32_t>(seqs.size())};
  const int64_t items = work_items(w);
  if (items == 0) return;
  grid = static_cast<int>(std::min<int64_t>(grid, items));  // the launch: min(items, resident CTAs)
  ++g_model_runs;
  ScheduleModel m;
  m.seqs = &seqs, m.w = w, m.group = group, m.bm = bm, m.bn = bn, m.grid = grid, m.stages = stages;
  m.dynamic = dynamic, m.deterministic = true, m.dq_by_tma = dq_by_tma;
  const bool finished = m.run(seed);
  CHECK(finished, "deadlock: grid %d items %ld stages %d dynamic %d by TMA %d seed %llu", grid, (long)items, stages,
        dynamic, dq_by_tma, static_cast<unsigned long long>(seed));
  std::vector<int> produced(items, 0);
  for (const ModelRole& r : m.roles) {
    const ModelRole& producer = m.roles[r.cta * (kWarps + 1)];
    CHECK(r.seq == producer.seq && !r.seq.empty() && r.seq.back() == kNoTile && r.seq.front() == r.cta,
          "cta %d warp %d walked another sequence (grid %d items %ld dynamic %d)", r.cta, r.warp, grid, (long)items,
          dynamic);
    for (size_t i = 1; i + 1 < r.seq.size(); ++i)
      CHECK(r.seq[i] > r.seq[i - 1], "cta %d runs item %d after %d: not increasing", r.cta, r.seq[i], r.seq[i - 1]);
    if (r.warp < 0)
      for (size_t i = 0; i + 1 < r.seq.size(); ++i) ++produced[r.seq[i]];
  }
  for (int64_t i = 0; i < items; ++i) {
    CHECK(produced[i] == 1, "item %ld handed out %d times (grid %d dynamic %d)", (long)i, produced[i], grid, dynamic);
    CHECK(m.runs[i] == kWarps, "item %ld taken by %d consumer warps, not %d", (long)i, m.runs[i], kWarps);
  }
  if (dynamic) CHECK(m.counter == items, "counter ends at %d, not %ld: one failed claim per CTA", m.counter, (long)items);
  for (int32_t b = 0; b < w.batch; ++b)
    for (int32_t hq = 0; hq < m.heads_q; ++hq)
      for (int32_t mt = 0; mt < m.m_tiles; ++mt) {
        const std::vector<int32_t>& a = m.adds[semaphore_index(b, hq, mt, m.heads_q, m.m_tiles)];
        const Range kr = key_block_range(seqs[b], mt, bm, bn);
        std::vector<int32_t> want;  // by TMA both consumers of a block add, in either order, before the next block
        for (int32_t n = kr.begin; n < kr.end; ++n)
          for (int k = 0; k < m.releases_per_block(); ++k) want.push_back(n);
        CHECK(a == want, "b %d hq %d tile %d: %zu adds, not blocks %d..%d in order (grid %d dynamic %d by TMA %d)", b,
              hq, mt, a.size(), kr.begin, kr.end, grid, dynamic, dq_by_tma);
        CHECK(m.sem[semaphore_index(b, hq, mt, m.heads_q, m.m_tiles)] == static_cast<int32_t>(want.size()),
              "b %d hq %d tile %d: a turn never passed on (by TMA %d)", b, hq, mt, dq_by_tma);
      }
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
  // The roles and barriers under random interleavings: dynamic claims and the static walk, deterministic mode,
  // grids from 1 CTA to more than the items, 2 and 3 stages.
  for (const auto& seqs : batches)
    for (int group : {1, 3})
      for (int grid : {1, 2, 3, 5, 9, 17})
        for (int stages = 2; stages <= 3; ++stages)
          for (uint64_t seed = 0; seed < 4; ++seed)
            for (bool by_tma : {false, true}) {
              check_model(seqs, 2, group, 4, 8, grid, stages, true, by_tma, seed);
              if (seed < 2) check_model(seqs, 2, group, 4, 8, grid, stages, false, by_tma, seed);
            }
  for (const auto& seqs : batches)
    for (int grid : {1, 4, 7})
      for (uint64_t seed = 0; seed < 2; ++seed)
        for (bool by_tma : {false, true}) check_model(seqs, 2, 1, 64, 64, grid, 2, true, by_tma, seed);
  CHECK(claimed_tile(0, 4, 10) == 4 && claimed_tile(5, 4, 10) == 9 && claimed_tile(6, 4, 10) == kNoTile &&
            claimed_tile(2147483600, 132, 2147483647) == kNoTile,
        "claimed_tile bounds");
  std::printf("ok %ld geometries, %ld schedules, %ld interleaved runs, %ld checks\n", geometries, schedules,
              g_model_runs, g_checks);
  return 0;
}
