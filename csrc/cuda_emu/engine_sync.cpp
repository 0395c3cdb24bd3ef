// The sm_90a engine's synchronisation (emu.h, engine_internal.h): warp / warpgroup rendezvous, named barriers
// counted per warp, spins for the deadlock detector, and what a thread's exit releases.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "engine_internal.h"

namespace flashcore::cuda_emu {
namespace detail {


std::string lane_ranges(const std::vector<int>& lanes) {  // "0-4, 6, 9-31"
  std::string s;
  for (size_t i = 0; i < lanes.size();) {
    size_t j = i;
    while (j + 1 < lanes.size() && lanes[j + 1] == lanes[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(lanes[i]);
    if (j > i) s += "-" + std::to_string(lanes[j]);
    i = j + 1;
  }
  return s;
}

void Launch::exit_current() {
  Fiber& f = *current;
  Cta& c = ctas[f.cta];
  f.wait = Wait::kExited;
  set_runnable(f, false);
  --live;
  --c.live;
  ++epoch;
  const int warp = f.tid / kWarpSize, warpgroup = f.tid / kWarpgroupSize;
  --c.warp_live[warp];
  --c.warpgroup_live[warpgroup];
  for (Group* g : {&c.warps[warp], &c.warpgroups[warpgroup]}) {
    if (g->arrived == 0) continue;
    if (!g->live_only) {
      fail_here(std::string("exited while other threads of its ") + (g == &c.warps[warp] ? "warp" : "warpgroup") +
                " wait for it in " + g->name);
    }
    if (g->arrived == c.warp_live[warp]) finish_barrier_warp(c, warp, nullptr);
  }
  if (c.warp_live[warp] == 0) {
    --c.live_warps;
    check_whole_cta_barriers(c);
  }
  if (c.live == 0) finished.push_back(f.cta);  // the scheduler frees the slot (it cannot while on this stack)
  yield();
  std::abort();  // an exited fiber is never resumed
}

// The last live lane of a warp reached bar.sync / bar.arrive: the warp's arrival counts (32 threads).
void Launch::finish_barrier_warp(Cta& c, int warp, Fiber* self_fiber) {
  Group& g = c.warps[warp];
  const BarrierArg* first = nullptr;
  for (const void* p : g.in) {
    const auto* a = static_cast<const BarrierArg*>(p);
    if (a == nullptr) continue;
    if (first == nullptr) first = a;
    if (a->id != first->id || a->threads != first->threads) {
      fail_here("lanes of one warp reached different barriers: " + std::string(g.name) + " " +
                std::to_string(first->id) + " (" + std::to_string(first->threads) + " threads) and " +
                std::to_string(a->id) + " (" + std::to_string(a->threads) + " threads)");
    }
  }
  const int id = first->id, threads = first->threads;
  const bool sync = std::strcmp(g.name, "bar.sync") == 0;
  Barrier& b = c.barriers[id];
  if (b.arrived == 0) {
    b.whole_cta = threads == 0;
    b.expected = threads;
  } else if (b.whole_cta != (threads == 0) || b.expected != threads) {
    fail_here("barrier " + std::to_string(id) + ": warps disagree on its thread count (" + std::to_string(threads) +
              " here, " + std::to_string(b.expected) + " from warps that arrived earlier; 0 = the whole CTA)");
  }
  b.arrived += kWarpSize;
  for (int index : g.waiting) {
    if (sync) {
      fibers[index].wait = Wait::kBarrier;
      fibers[index].barrier = id;
      b.waiting.push_back(index);
    } else {
      wake(index);
    }
  }
  if (sync && self_fiber != nullptr) {
    self_fiber->wait = Wait::kBarrier;
    self_fiber->barrier = id;
    set_runnable(*self_fiber, false);
    b.waiting.push_back(static_cast<int>(self_fiber - fibers.data()));
  }
  g.waiting.clear();
  std::fill(g.in.begin(), g.in.end(), nullptr);
  std::fill(g.present.begin(), g.present.end(), 0);
  g.arrived = 0;
  g.name = nullptr;
  const int expected = b.whole_cta ? kWarpSize * c.live_warps : b.expected;
  if (b.arrived >= expected) complete_barrier(c, id);
}

void Launch::complete_barrier(Cta& c, int id) {
  Barrier& b = c.barriers[id];
  ++stats.barriers;
  ++epoch;
  for (int index : b.waiting) wake(index);
  b.waiting.clear();
  b.arrived = 0;
}

void Launch::check_whole_cta_barriers(Cta& c) {  // a warp exited: CTA-wide barriers now need one warp fewer
  for (int id = 0; id < kNamedBarriers; ++id) {
    if (c.barriers[id].whole_cta && c.barriers[id].arrived > 0 &&
        c.barriers[id].arrived >= kWarpSize * c.live_warps) {
      complete_barrier(c, id);
    }
  }
}

// The rendezvous of group_sync and of the barriers' warp step. Returns true in the last arriver (which completes
// the group); the others return false after the group completed (or, for bar.sync, after the barrier did).
bool join_group(Launch& l, Fiber& f, int group_size, const char* name, const void* in, void* out, bool live_only) {
  Cta& c = l.ctas[f.cta];
  if (group_size != kWarpSize && group_size != kWarpgroupSize) {
    l.fail_here(std::string(name) + ": group size " + std::to_string(group_size) + " (only 32 and 128 exist)");
  }
  const int index = f.tid / group_size, first = index * group_size;
  const int members = std::min(group_size, l.block_threads - first), member = f.tid - first;
  Group& g = group_size == kWarpSize ? c.warps[index] : c.warpgroups[index];
  const int live = group_size == kWarpSize ? c.warp_live[index] : c.warpgroup_live[index];
  const char* unit = group_size == kWarpSize ? "warp" : "warpgroup";
  if (!live_only && live < members) {
    l.fail_here(std::string(name) + " needs all " + std::to_string(members) + " threads of the " + unit + "; " +
                std::to_string(members - live) + " have exited");
  }
  if (g.arrived == 0) {
    g.name = name;
    g.live_only = live_only;
  } else if (std::strcmp(g.name, name) != 0) {
    std::vector<int> waiting;
    for (int m = 0; m < members; ++m) {
      if (g.present[m]) waiting.push_back(m);
    }
    l.fail_here(std::string("divergent collectives: this thread reached ") + name + " while threads " +
                lane_ranges(waiting) + " of its " + unit + " (numbered within it) wait in " + g.name);
  }
  g.in[member] = in;
  g.out[member] = out;
  g.present[member] = 1;
  ++g.arrived;
  ++l.epoch;
  if (g.arrived == (live_only ? live : members)) return true;
  f.wait = Wait::kGroup;
  f.group_size = group_size;
  g.waiting.push_back(static_cast<int>(&f - l.fibers.data()));
  l.set_runnable(f, false);
  l.yield();
  return false;
}

void barrier_op(int id, int threads, bool sync) {
  Launch& l = current_launch();
  Fiber& f = l.self(sync ? "bar.sync" : "bar.arrive");
  const int rounded = (l.block_threads + kWarpSize - 1) / kWarpSize * kWarpSize;
  if (id < 0 || id >= kNamedBarriers) l.fail_here("barrier id " + std::to_string(id) + " (ids are 0..15)");
  if (threads < 0 || threads % kWarpSize != 0 || threads > rounded) {
    l.fail_here("barrier " + std::to_string(id) + " with a count of " + std::to_string(threads) +
                " threads (needs a multiple of 32, at most the block's " + std::to_string(rounded) + ")");
  }
  const BarrierArg arg{id, threads};
  if (join_group(l, f, kWarpSize, sync ? "bar.sync" : "bar.arrive", &arg, nullptr, true)) {
    l.finish_barrier_warp(l.ctas[f.cta], f.tid / kWarpSize, &f);
    if (f.wait == Wait::kBarrier) l.yield();  // resumed when the barrier completes
  }
}

}  // namespace detail

using namespace detail;

void spin(const char* what) {
  Launch& l = current_launch();
  Fiber& f = l.self("spin");
  std::snprintf(f.what, kWhatBytes, "%s", what);
  if (f.spin_epoch != l.epoch) {
    f.spin_epoch = l.epoch;
    f.spins = 0;
  }
  if (++f.spins == kStuckSpins) {
    if (l.stuck_epoch != l.epoch) {
      l.stuck_epoch = l.epoch;
      l.stuck = 0;
    }
    ++l.stuck;
  }
  if (l.options.schedule == Schedule::kRandomPriority) l.set_warp_priority(f, l.random() & ~kWorkingPriority);
  l.set_spinning(f, true);
  l.yield();
  l.set_spinning(f, false);
}

void progress() { ++current_launch().epoch; }

void group_sync(int group_size, const char* name, const void* in, void* out, Compute compute, const void* ctx) {
  Launch& l = current_launch();
  Fiber& f = l.self(name);
  if (!join_group(l, f, group_size, name, in, out, false)) return;
  Cta& c = l.ctas[f.cta];
  Group& g = group_size == kWarpSize ? c.warps[f.tid / kWarpSize] : c.warpgroups[f.tid / kWarpgroupSize];
  ++l.stats.collectives;
  compute(ctx, g.in.data(), g.out.data());
  for (int index : g.waiting) l.wake(index);
  g.waiting.clear();
  std::fill(g.in.begin(), g.in.end(), nullptr);
  std::fill(g.out.begin(), g.out.end(), nullptr);
  std::fill(g.present.begin(), g.present.end(), 0);
  g.arrived = 0;
  g.name = nullptr;
}

void named_barrier_sync(int id, int threads) { barrier_op(id, threads, true); }
void named_barrier_arrive(int id, int threads) { barrier_op(id, threads, false); }

}  // namespace flashcore::cuda_emu
