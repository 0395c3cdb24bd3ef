// The sm_90a grid model's engine (emu.h): every thread of every CTA a fiber on the launching OS thread, a seeded
// scheduler, warp / warpgroup rendezvous, named barriers, the asynchronous queue, per-CTA state and shared windows,
// deadlock and timeout reports.
#include "emu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../emu_common/fiber.h"
#include "../emu_common/watchdog.h"

// The CUDA built-in variables, as the CUDA headers declare them to a host compiler (device_launch_parameters.h:
// extern "C" const uint3 threadIdx, ...): defined here and written by the scheduler before it resumes a fiber, so
// kernels read them as on the device, and member names like cudaLaunchConfig_t::gridDim stay untouched. A fiber's
// own values never change while it runs: a compiler that caches them (they are const to the kernel) is right.
// Defined under other C++ names with the symbols' assembler names, so that this file also compiles with the
// prelude force-included (which declares them const, with the CUDA types).
struct BuiltinUint3 {  // uint3 / dim3 layout
  unsigned x, y, z;
};
BuiltinUint3 g_thread_idx asm("threadIdx");
BuiltinUint3 g_block_idx asm("blockIdx");
BuiltinUint3 g_block_dim asm("blockDim");
BuiltinUint3 g_grid_dim asm("gridDim");
int g_warp_size asm("warpSize") = 32;

namespace flashcore::cuda_emu {
namespace {

using emu_common::FiberContext;
using emu_common::FiberStack;

// Reserved per thread; only touched pages become memory (fiber.h). Kernel frames (~200 fp32 accumulators plus
// locals) take tens of KiB, and the last arriver of a wgmma computes the whole warpgroup's product on its stack.
constexpr size_t kFiberStackBytes = 1024 * 1024;
// Spins without any progress after which a spinning fiber counts as stuck (a poll that succeeds spins once, a
// poll loop spins on): when every runnable fiber is stuck and no asynchronous work is queued, nothing can change.
constexpr int kStuckSpins = 3;
constexpr uint64_t kClockCheckPoints = 1024;   // scheduling points between two reads of the wall clock (timeout)
constexpr size_t kWhatBytes = 160;             // a spin's description, kept for the deadlock report
constexpr size_t kReportLines = 160;           // the report lists at most this many lane groups
constexpr size_t kWindowAlign = 4096;          // windows page-aligned: a generic address and its shared-window
                                               // address agree modulo any tile alignment (1024 for the swizzle)
// splitmix64 (Steele, Lea, Flood 2014): a tiny seeded generator whose sequence is the same on every platform.
constexpr uint64_t kSplitmixIncrement = 0x9e3779b97f4a7c15ull;
constexpr uint64_t kSplitmixMul1 = 0xbf58476d1ce4e5b9ull;
constexpr uint64_t kSplitmixMul2 = 0x94d049bb133111ebull;

enum class Wait : uint8_t { kRunning, kSpin, kGroup, kBarrier, kExited, kAbandoned };

struct Fiber {
  FiberContext context;
  FiberStack stack;
  int cta = 0, tid = 0;  // tid: linear thread index in the CTA
  Wait wait = Wait::kRunning;
  int group_size = 0;    // kGroup: 32 or 128
  int barrier = -1;      // kBarrier: the id
  int runnable_pos = -1; // index in Launch::runnable, -1 when not runnable
  uint64_t spin_epoch = ~uint64_t(0);
  int spins = 0;         // spins since progress epoch spin_epoch
  char what[kWhatBytes] = {};
};

struct Group {  // one warp's or warpgroup's rendezvous
  const char* name = nullptr;
  int arrived = 0;
  bool live_only = false;  // bar.sync / bar.arrive: lanes that exited do not count
  std::vector<const void*> in;
  std::vector<void*> out;
  std::vector<uint8_t> present;  // member arrived
  std::vector<int> waiting;      // fibers blocked in it
};

struct Barrier {  // a named barrier's current phase
  int arrived = 0;          // threads, counted per warp
  int expected = 0;         // explicit thread count of the phase (whole_cta: live warps x 32, read when checked)
  bool whole_cta = false;
  std::vector<int> waiting;  // bar.sync lanes
};

struct BarrierArg {
  int id, threads;
};

struct StateEntry {
  const void* key;
  void* object;
  void (*destroy)(void*);
};

struct Cta {
  Dim3 idx;
  uint8_t* window = nullptr;
  int live = 0, live_warps = 0;
  std::vector<int> warp_live, warpgroup_live;
  std::vector<Group> warps, warpgroups;
  Barrier barriers[kNamedBarriers];
  std::vector<StateEntry> state;
};

struct AsyncItem {
  uint64_t ticket;
  int cta;
  std::function<void()> work;
};

struct Failure {};  // thrown by fail() in asynchronous work that the scheduler runs (no fiber to abandon)

struct Launch {
  const std::function<void()>* kernel = nullptr;
  Dim3 grid, block;
  int block_threads = 0;
  size_t dynamic_bytes = 0;
  LaunchOptions options;
  LaunchStats stats;
  std::vector<Cta> ctas;
  std::vector<Fiber> fibers;
  FiberContext scheduler;
  Fiber* current = nullptr;
  int async_cta = -1;            // the CTA asynchronous work runs on behalf of
  Fiber* inline_owner = nullptr; // the fiber whose stack runs asynchronous work in run_async_now
  std::vector<int> runnable;
  std::vector<uint64_t> runnable_bits;
  int live = 0;
  uint64_t rng = 0, points = 0, epoch = 0, stuck_epoch = ~uint64_t(0);
  int stuck = 0, rr_cursor = -1;
  std::map<std::pair<uint64_t, uint64_t>, AsyncItem> queue;  // (due point, ticket)
  std::unordered_map<uint64_t, uint64_t> due_of;            // pending ticket -> due point
  uint64_t next_ticket = 1;
  std::string error;

  uint64_t random() {
    uint64_t z = (rng += kSplitmixIncrement);
    z = (z ^ (z >> 30)) * kSplitmixMul1;
    z = (z ^ (z >> 27)) * kSplitmixMul2;
    return z ^ (z >> 31);
  }

  void set_runnable(Fiber& f, bool on) {
    const int index = static_cast<int>(&f - fibers.data());
    if (on == (f.runnable_pos >= 0)) return;
    if (on) {
      f.runnable_pos = static_cast<int>(runnable.size());
      runnable.push_back(index);
      runnable_bits[index / 64] |= uint64_t(1) << (index % 64);
    } else {
      const int last = runnable.back();
      runnable[f.runnable_pos] = last;
      fibers[last].runnable_pos = f.runnable_pos;
      runnable.pop_back();
      f.runnable_pos = -1;
      runnable_bits[index / 64] &= ~(uint64_t(1) << (index % 64));
    }
  }

  void wake(int index) {
    fibers[index].wait = Wait::kRunning;
    set_runnable(fibers[index], true);
  }

  void yield() { emu_common::fiber_switch(current->context, scheduler); }  // back to the scheduler loop

  std::string cta_name(int cta) const {
    const Dim3& b = ctas[cta].idx;
    return "CTA (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
  }

  std::string where() const {
    if (current != nullptr) {
      return cta_name(current->cta) + " warp " + std::to_string(current->tid / kWarpSize) + " lane " +
             std::to_string(current->tid % kWarpSize) + " (thread " + std::to_string(current->tid) + "): ";
    }
    if (async_cta >= 0) return "asynchronous work of " + cta_name(async_cta) + ": ";
    return "";
  }

  [[noreturn]] void abandon_current() {
    current->wait = Wait::kAbandoned;
    set_runnable(*current, false);
    yield();  // never resumed: the scheduler stops at the first error
    std::abort();
  }

  [[noreturn]] void fail_here(const std::string& message) {
    if (error.empty()) error = where() + message;
    if (current == nullptr && inline_owner != nullptr) {  // async work on a fiber's stack: abandon that fiber
      current = std::exchange(inline_owner, nullptr);
      async_cta = -1;
    }
    if (current != nullptr) abandon_current();
    throw Failure{};
  }

  Fiber& self(const char* op) {
    if (current == nullptr) fail_here(std::string(op) + " needs a kernel thread (called from asynchronous work)");
    return *current;
  }

  int cta_index(const char* op) {
    if (current != nullptr) return current->cta;
    if (async_cta >= 0) return async_cta;
    fail_here(std::string(op) + " called with no CTA current");
  }

  void run_item(AsyncItem& item);
  bool run_due();
  void exit_current();
  void finish_barrier_warp(Cta& c, int warp, Fiber* self_fiber);
  void complete_barrier(Cta& c, int id);
  void check_whole_cta_barriers(Cta& c);
  bool all_stuck();
  int pick();
  std::string describe(const Fiber& f) const;
  std::string report() const;
  void run();
};

thread_local Launch* tl_launch = nullptr;

Launch& current_launch() {
  if (tl_launch == nullptr) {
    std::fprintf(stderr, "flashcore cuda_emu: a kernel builtin was called outside a launch\n");
    std::abort();
  }
  return *tl_launch;
}

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

void fiber_entry() {  // first code every fiber runs
  Launch& l = *tl_launch;
  std::string thrown;
  try {
    (*l.kernel)();
  } catch (const std::exception& e) {  // leave the handler before switching away: the EH state is per OS thread
    thrown = e.what();
  } catch (...) {
    thrown = "an exception that is not a std::exception";
  }
  if (!thrown.empty()) l.fail_here("the kernel threw " + thrown);
  l.exit_current();
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

void Launch::run_item(AsyncItem& item) {
  Fiber* const saved_current = current;
  Fiber* const saved_owner = inline_owner;
  const int saved_cta = async_cta;
  if (current != nullptr) inline_owner = current;
  current = nullptr;
  async_cta = item.cta;
  std::string thrown;
  try {
    item.work();
  } catch (const Failure&) {
    throw;
  } catch (const std::exception& e) {
    thrown = e.what();
  }
  if (!thrown.empty()) fail_here("asynchronous work threw " + thrown);
  current = saved_current;
  inline_owner = saved_owner;
  async_cta = saved_cta;
  ++stats.async_ops;
  ++epoch;
}

bool Launch::run_due() {  // false after a failure
  while (!queue.empty() && queue.begin()->first.first <= points) {
    AsyncItem item = std::move(queue.begin()->second);
    queue.erase(queue.begin());
    due_of.erase(item.ticket);
    try {
      run_item(item);
    } catch (const Failure&) {
      current = nullptr;
      async_cta = -1;
      return false;
    }
  }
  return error.empty();
}

bool Launch::all_stuck() {
  if (stuck_epoch != epoch || stuck < static_cast<int>(runnable.size())) return false;
  for (int index : runnable) {  // confirm: each one's last switch was a spin, and it spun on since the last event
    const Fiber& f = fibers[index];
    if (f.wait != Wait::kSpin || f.spin_epoch != epoch || f.spins < kStuckSpins) return false;
  }
  return true;
}

int Launch::pick() {
  if (options.schedule == Schedule::kRoundRobin) {
    const int n = static_cast<int>(fibers.size());
    for (int step = 1; step <= n; ++step) {
      const int i = (rr_cursor + step) % n;
      const uint64_t word = runnable_bits[i / 64] >> (i % 64);
      if (word == 0) {  // skip to the next word
        step += 63 - i % 64;
        continue;
      }
      if (word & 1) return rr_cursor = i;
    }
  }
  return runnable[random() % runnable.size()];
}

std::string Launch::describe(const Fiber& f) const {
  const Cta& c = ctas[f.cta];
  switch (f.wait) {
    case Wait::kRunning:
      return "runnable";
    case Wait::kSpin:
      return std::string("spinning: ") + f.what;
    case Wait::kGroup: {
      const Group& g = f.group_size == kWarpSize ? c.warps[f.tid / kWarpSize] : c.warpgroups[f.tid / kWarpgroupSize];
      return std::string("in ") + (g.name ? g.name : "?") + " (" + std::to_string(g.arrived) + " of its " +
             (f.group_size == kWarpSize ? "warp's" : "warpgroup's") + " threads arrived)";
    }
    case Wait::kBarrier: {
      const Barrier& b = c.barriers[f.barrier];
      const int expected = b.whole_cta ? kWarpSize * c.live_warps : b.expected;
      return "bar.sync " + std::to_string(f.barrier) + " (" + std::to_string(b.arrived) + " of " +
             std::to_string(expected) + " threads arrived" + (b.whole_cta ? ", whole CTA" : "") + ")";
    }
    case Wait::kExited:
      return "exited";
    case Wait::kAbandoned:
      return "failed";
  }
  return "?";
}

std::string Launch::report() const {  // one line per run of lanes of a warp in the same state
  std::string out;
  size_t lines = 0, skipped = 0;
  for (size_t ci = 0; ci < ctas.size(); ++ci) {
    if (ctas[ci].live == 0) continue;
    for (int w = 0; w * kWarpSize < block_threads; ++w) {
      if (ctas[ci].warp_live[w] == 0) continue;
      std::vector<std::pair<std::string, std::vector<int>>> states;
      for (int t = w * kWarpSize; t < std::min(block_threads, (w + 1) * kWarpSize); ++t) {
        std::string d = describe(fibers[ci * block_threads + t]);
        auto it = std::find_if(states.begin(), states.end(), [&](const auto& s) { return s.first == d; });
        if (it == states.end()) it = states.insert(states.end(), {d, {}});
        it->second.push_back(t % kWarpSize);
      }
      for (const auto& [d, lanes] : states) {
        if (lines++ >= kReportLines) {
          ++skipped;
          continue;
        }
        out += "\n  " + cta_name(static_cast<int>(ci)) + " warp " + std::to_string(w) + " lanes " +
               lane_ranges(lanes) + ": " + d;
      }
    }
  }
  if (skipped > 0) out += "\n  ... " + std::to_string(skipped) + " more";
  if (!queue.empty()) out += "\n  " + std::to_string(queue.size()) + " asynchronous operations pending";
  return out;
}

void Launch::run() {
  const auto start = std::chrono::steady_clock::now();
  emu_common::Watchdog watchdog("flashcore cuda_emu", options.timeout_seconds);
  uint64_t next_clock_check = kClockCheckPoints;
  while (live > 0 && error.empty()) {
    ++points;
    if (points >= next_clock_check &&
        (next_clock_check = points + kClockCheckPoints,
         std::chrono::steady_clock::now() - start > std::chrono::duration<double>(options.timeout_seconds))) {
      error = "timeout: the launch ran longer than " + std::to_string(options.timeout_seconds) +
              " s; what every live warp was doing:" + report();
      break;
    }
    if (!run_due()) break;
    if (runnable.empty() || all_stuck()) {
      if (!queue.empty()) {  // nothing can run before the copy engine delivers: it does so now
        points = std::max(points, queue.begin()->first.first);
        continue;
      }
      error = "deadlock: no thread can make progress and no asynchronous work is pending; every live warp waits:" +
              report();
      break;
    }
    current = &fibers[pick()];
    const unsigned t = static_cast<unsigned>(current->tid);
    g_thread_idx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    const Dim3& b = ctas[current->cta].idx;
    g_block_idx = {b.x, b.y, b.z};
    watchdog.beat(current->cta, current->tid);
    ++stats.fiber_switches;
    emu_common::fiber_switch(scheduler, current->context);
    current = nullptr;
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

}  // namespace

// ---- inside a kernel ----------------------------------------------------------------------------------------
Dim3 thread_idx() {
  Launch& l = current_launch();
  const unsigned t = static_cast<unsigned>(l.self("threadIdx").tid);
  return Dim3{t % l.block.x, t / l.block.x % l.block.y, t / (l.block.x * l.block.y)};
}
Dim3 block_idx() {
  Launch& l = current_launch();
  return l.ctas[l.cta_index("blockIdx")].idx;
}
Dim3 grid_dim() { return current_launch().grid; }
Dim3 block_dim() { return current_launch().block; }
int linear_thread() { return current_launch().self("linear_thread").tid; }
int linear_block() { return current_launch().cta_index("linear_block"); }

uint8_t* dynamic_smem() {
  Launch& l = current_launch();
  return l.ctas[l.cta_index("dynamic_smem")].window + kDynamicSmemOffset;
}

uint32_t smem_address(const void* generic) {
  Launch& l = current_launch();
  const int cta = l.cta_index("smem_address");
  const auto p = reinterpret_cast<uintptr_t>(generic), base = reinterpret_cast<uintptr_t>(l.ctas[cta].window);
  const uintptr_t limit = kDynamicSmemOffset + l.dynamic_bytes;
  if (p < base || p - base > limit) {  // one past the end is a valid address to form
    const int owner = smem_owner(generic);
    l.fail_here("generic address " + std::to_string(p) + " is not in this CTA's shared memory (" +
                (owner >= 0 ? "it is in " + l.cta_name(owner) + "'s window"
                            : "window bytes [0, " + std::to_string(limit) + ") in use") + ")");
  }
  return static_cast<uint32_t>(p - base);
}

uint8_t* smem_pointer(uint32_t address, size_t bytes) {
  Launch& l = current_launch();
  const int cta = l.cta_index("smem_pointer");
  const uint64_t limit = kDynamicSmemOffset + l.dynamic_bytes;
  if (uint64_t(address) + bytes > limit) {
    l.fail_here("shared access of " + std::to_string(bytes) + " bytes at window address " + std::to_string(address) +
                " runs past the " + std::to_string(limit) + " bytes in use (1024 reserved + " +
                std::to_string(l.dynamic_bytes) + " dynamic)");
  }
  return l.ctas[cta].window + address;
}

void fail(const std::string& message) { current_launch().fail_here(message); }

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
  f.wait = Wait::kSpin;
  l.yield();
  f.wait = Wait::kRunning;
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

uint64_t enqueue_async(std::function<void()> work) {
  Launch& l = current_launch();
  const int cta = l.cta_index("enqueue_async");
  const uint64_t delay = 1 + l.random() % static_cast<uint64_t>(std::max(1, l.options.max_async_delay));
  const uint64_t ticket = l.next_ticket++;
  l.queue.emplace(std::make_pair(l.points + delay, ticket), AsyncItem{ticket, cta, std::move(work)});
  l.due_of[ticket] = l.points + delay;
  return ticket;
}

void run_async_now(uint64_t ticket) {
  Launch& l = current_launch();
  const auto due = l.due_of.find(ticket);
  if (due == l.due_of.end()) return;  // already ran
  const auto node = l.queue.find({due->second, ticket});
  AsyncItem item = std::move(node->second);
  l.queue.erase(node);
  l.due_of.erase(due);
  l.run_item(item);  // a failure inside abandons the calling fiber (fail_here)
}

bool async_done(uint64_t ticket) { return current_launch().due_of.count(ticket) == 0; }

void* cta_state_raw(const void* key, void* (*make)(), void (*destroy)(void*)) {
  Launch& l = current_launch();
  return cta_state_raw_of(l.cta_index("cta_state"), key, make, destroy);
}

void* cta_state_raw_of(int cta, const void* key, void* (*make)(), void (*destroy)(void*)) {
  Launch& l = current_launch();
  if (cta < 0 || cta >= static_cast<int>(l.ctas.size())) l.fail_here("cta_state of CTA " + std::to_string(cta));
  for (const StateEntry& e : l.ctas[cta].state) {
    if (e.key == key) return e.object;
  }
  l.ctas[cta].state.push_back(StateEntry{key, make(), destroy});
  return l.ctas[cta].state.back().object;
}

int smem_owner(const void* generic) {
  if (tl_launch == nullptr) return -1;
  const auto p = reinterpret_cast<uintptr_t>(generic);
  for (size_t i = 0; i < tl_launch->ctas.size(); ++i) {
    const auto base = reinterpret_cast<uintptr_t>(tl_launch->ctas[i].window);
    if (p >= base && p - base < kSmemWindowBytes) return static_cast<int>(i);
  }
  return -1;
}

int registers_per_thread() { return current_launch().options.registers_per_thread; }

int to_c_status(const std::string& message, char* error, int error_bytes) {
  if (message.empty()) return 0;
  if (error != nullptr && error_bytes > 0) std::snprintf(error, static_cast<size_t>(error_bytes), "%s", message.c_str());
  return -1;
}

std::string launch(Dim3 grid, Dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& kernel,
                   const LaunchOptions& options, LaunchStats* stats) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint64_t num_ctas = uint64_t(grid.x) * grid.y * grid.z;
  if (threads == 0 || threads > 1024) return "block of " + std::to_string(threads) + " threads (1..1024 allowed)";
  if (dynamic_smem_bytes > kMaxDynamicSmemBytes) {
    return "dynamic shared memory of " + std::to_string(dynamic_smem_bytes) + " bytes exceeds the sm_90 limit of " +
           std::to_string(kMaxDynamicSmemBytes);
  }
  if (tl_launch != nullptr) return "launch() called from inside a kernel";
  static std::mutex one_launch_at_a_time;  // the built-in variables are process-wide
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  Launch l;
  l.kernel = &kernel;
  l.grid = grid;
  l.block = block;
  l.block_threads = static_cast<int>(threads);
  l.dynamic_bytes = dynamic_smem_bytes;
  l.options = options;
  l.rng = options.seed;
  const int warps = (l.block_threads + kWarpSize - 1) / kWarpSize;
  const int warpgroups = (l.block_threads + kWarpgroupSize - 1) / kWarpgroupSize;
  l.ctas.resize(num_ctas);
  l.fibers.resize(num_ctas * threads);
  l.runnable_bits.assign((l.fibers.size() + 63) / 64, 0);
  for (uint64_t i = 0; i < num_ctas; ++i) {
    Cta& c = l.ctas[i];
    c.idx = Dim3{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                 static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
    c.window = static_cast<uint8_t*>(std::aligned_alloc(kWindowAlign, kSmemWindowBytes));
    std::memset(c.window, 0xff, kSmemWindowBytes);  // NaN in bf16/fp16/fp32: unwritten reads show
    c.live = l.block_threads;
    c.live_warps = warps;
    c.warp_live.assign(warps, 0);
    c.warpgroup_live.assign(warpgroups, 0);
    for (int t = 0; t < l.block_threads; ++t) ++c.warp_live[t / kWarpSize], ++c.warpgroup_live[t / kWarpgroupSize];
    c.warps.resize(warps);
    c.warpgroups.resize(warpgroups);
    for (Group& g : c.warps) g.in.assign(kWarpSize, nullptr), g.out.assign(kWarpSize, nullptr), g.present.assign(kWarpSize, 0);
    for (Group& g : c.warpgroups) {
      g.in.assign(kWarpgroupSize, nullptr), g.out.assign(kWarpgroupSize, nullptr), g.present.assign(kWarpgroupSize, 0);
    }
  }
  for (size_t i = 0; i < l.fibers.size(); ++i) {
    Fiber& f = l.fibers[i];
    f.cta = static_cast<int>(i / threads);
    f.tid = static_cast<int>(i % threads);
    f.stack = FiberStack(kFiberStackBytes);
    emu_common::fiber_prepare(f.context, f.stack, &fiber_entry);
    l.set_runnable(f, true);
  }
  l.live = static_cast<int>(l.fibers.size());
  g_block_dim = {block.x, block.y, block.z};
  g_grid_dim = {grid.x, grid.y, grid.z};
  tl_launch = &l;
  l.run();
  for (Cta& c : l.ctas) {
    for (const StateEntry& e : c.state) e.destroy(e.object);
    c.state.clear();
  }
  tl_launch = nullptr;
  l.stats.ctas = num_ctas;
  for (const Fiber& f : l.fibers) l.stats.max_stack_bytes = std::max<uint64_t>(l.stats.max_stack_bytes, f.stack.resident_bytes());
  for (Cta& c : l.ctas) std::free(c.window);
  if (stats != nullptr) *stats = l.stats;
  return l.error;
}

}  // namespace flashcore::cuda_emu
