// The sm_90a engine's internals, shared by engine.cpp (scheduler, launch, asynchronous queue, per-CTA state,
// shared windows, reports) and engine_sync.cpp (rendezvous, named barriers, spins, thread exit). Not an interface:
// everything outside the engine uses emu.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../emu_common/fiber.h"
#include "emu.h"

namespace flashcore::cuda_emu::detail {

using emu_common::FiberContext;
using emu_common::FiberStack;

// Spins without any progress after which a spinning fiber counts as stuck (a poll that succeeds spins once, a
// poll loop spins on): when every runnable fiber is stuck and no asynchronous work is queued, nothing can change.
constexpr int kStuckSpins = 3;
// kRandomPriority: priorities belong to warps (a warp runs until all its lanes wait, then continues when its
// collective completes), one warp's is redrawn at one scheduling point in this many, on average; fresh priorities
// have the top bit set while a spinner's warp gets one with it clear: spinners yield to every warp with work.
constexpr uint64_t kPriorityRedrawPoints = 64;
constexpr uint64_t kWorkingPriority = uint64_t(1) << 63;
constexpr size_t kWhatBytes = 160;             // a spin's description, kept for the deadlock report
// splitmix64 (Steele, Lea, Flood 2014): a tiny seeded generator whose sequence is the same on every platform.
constexpr uint64_t kSplitmixIncrement = 0x9e3779b97f4a7c15ull;
constexpr uint64_t kSplitmixMul1 = 0xbf58476d1ce4e5b9ull;
constexpr uint64_t kSplitmixMul2 = 0x94d049bb133111ebull;

enum class Wait : uint8_t { kRunning, kSpin, kGroup, kBarrier, kExited, kAbandoned };

struct Fiber {
  FiberContext context;
  FiberStack stack;
  int cta = 0, tid = 0;  // cta: the residency slot (index in Launch::ctas); tid: linear thread index in the CTA
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

struct Cta {  // a residency slot and the CTA running in it
  int linear = -1;  // the CTA's index in the grid (its linear_block()); -1 once the grid has no CTA left for it
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
  int cta;  // slot
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
  // The resident CTAs (slots) and their threads, fibers[slot * block_threads + tid]. A grid larger than the slots
  // runs in waves: when a CTA's last thread exits, the grid's next CTA starts in its slot.
  std::vector<Cta> ctas;
  std::vector<Fiber> fibers;
  uint64_t grid_ctas = 0, next_cta = 0;  // CTAs in the grid; the next one to start
  std::vector<int> finished;             // slots whose CTA's threads have all exited
  FiberContext scheduler;
  Fiber* current = nullptr;
  int async_cta = -1;            // the CTA asynchronous work runs on behalf of
  Fiber* inline_owner = nullptr; // the fiber whose stack runs asynchronous work in run_async_now
  std::vector<int> runnable;
  std::vector<uint64_t> runnable_bits;
  // kRandomPriority: per warp of the grid (cta * warps_per_cta + warp), its priority and runnable lanes; the warps
  // with runnable lanes ordered by priority.
  bool by_priority = false;
  int warps_per_cta = 0;
  std::vector<uint64_t> warp_priority;
  std::vector<int> warp_runnable;
  std::set<std::pair<uint64_t, int>> ready_warps;
  // kLowestFirst / kHighestFirst: per warp of the grid, its working lanes (runnable and not spinning), and a bit per
  // warp that has any.
  bool greedy = false;
  std::vector<int> warp_working;
  std::vector<uint64_t> working_warp_bits;
  int live = 0;
  uint64_t rng = 0, points = 0, epoch = 0, stuck_epoch = ~uint64_t(0);
  int stuck = 0, rr_cursor = -1;
  std::map<std::pair<uint64_t, uint64_t>, AsyncItem> queue;  // (due point, ticket)
  std::unordered_map<uint64_t, uint64_t> due_of;            // pending ticket -> due point
  uint64_t next_ticket = 1;
  std::string error;

  int grid_warp(const Fiber& f) const { return f.cta * warps_per_cta + f.tid / kWarpSize; }

  void set_warp_priority(const Fiber& f, uint64_t priority) {  // kRandomPriority
    const int w = grid_warp(f);
    if (warp_runnable[w] > 0) {
      ready_warps.erase({warp_priority[w], w});
      ready_warps.insert({priority, w});
    }
    warp_priority[w] = priority;
  }

  void count_working(const Fiber& f, int delta) {  // kLowestFirst / kHighestFirst
    const int w = grid_warp(f);
    warp_working[w] += delta;
    if (warp_working[w] == 0) {
      working_warp_bits[w / 64] &= ~(uint64_t(1) << (w % 64));
    } else {
      working_warp_bits[w / 64] |= uint64_t(1) << (w % 64);
    }
  }

  // A runnable fiber enters or leaves a spin (spin()); the greedy schedules run spinners only when no warp works.
  void set_spinning(Fiber& f, bool on) {
    if (greedy && f.runnable_pos >= 0 && on != (f.wait == Wait::kSpin)) count_working(f, on ? -1 : 1);
    f.wait = on ? Wait::kSpin : Wait::kRunning;
  }

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
      const int w = grid_warp(f);
      if (by_priority && warp_runnable[w]++ == 0) ready_warps.insert({warp_priority[w], w});
      if (greedy && f.wait != Wait::kSpin) count_working(f, 1);
    } else {
      const int last = runnable.back();
      runnable[f.runnable_pos] = last;
      fibers[last].runnable_pos = f.runnable_pos;
      runnable.pop_back();
      f.runnable_pos = -1;
      runnable_bits[index / 64] &= ~(uint64_t(1) << (index % 64));
      const int w = grid_warp(f);
      if (by_priority && --warp_runnable[w] == 0) ready_warps.erase({warp_priority[w], w});
      if (greedy && f.wait != Wait::kSpin) count_working(f, -1);
    }
  }

  void wake(int index) {
    fibers[index].wait = Wait::kRunning;
    set_runnable(fibers[index], true);
  }

  void yield() { emu_common::fiber_switch(current->context, scheduler); }  // back to the scheduler loop

  int slot_of(int linear) const {  // the slot holding grid CTA `linear`, or -1 (not started, or its slot reused)
    for (size_t i = 0; i < ctas.size(); ++i) {
      if (ctas[i].linear == linear) return static_cast<int>(i);
    }
    return -1;
  }

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

  void* slot_state(int slot, const void* key, void* (*make)(), void (*destroy)(void*)) {  // cta_state of a slot
    for (const StateEntry& e : ctas[slot].state) {
      if (e.key == key) return e.object;
    }
    ctas[slot].state.push_back(StateEntry{key, make(), destroy});
    return ctas[slot].state.back().object;
  }

  void start_cta(int slot);
  bool retire_finished();
  void run_item(AsyncItem& item);
  bool run_queued(std::map<std::pair<uint64_t, uint64_t>, AsyncItem>::iterator it);
  bool run_due();
  void exit_current();
  void finish_barrier_warp(Cta& c, int warp, Fiber* self_fiber);
  void complete_barrier(Cta& c, int id);
  void check_whole_cta_barriers(Cta& c);
  bool all_stuck();
  int next_round_robin();
  int pick_greedy(bool lowest);
  int pick();
  std::string describe(const Fiber& f) const;
  std::string report() const;
  void run();
};

extern thread_local Launch* tl_launch;

inline Launch& current_launch() {
  if (tl_launch == nullptr) {
    std::fprintf(stderr, "flashcore cuda_emu: a kernel builtin was called outside a launch\n");
    std::abort();
  }
  return *tl_launch;
}

std::string lane_ranges(const std::vector<int>& lanes);  // "0-4, 6, 9-31"

}  // namespace flashcore::cuda_emu::detail
