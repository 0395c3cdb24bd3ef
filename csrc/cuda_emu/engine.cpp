// The sm_90a grid model's engine (emu.h): every thread of every CTA a fiber on the launching OS thread, a seeded
// scheduler, warp / warpgroup rendezvous, named barriers, the asynchronous queue, per-CTA state and shared windows,
// deadlock and timeout reports.
#include "emu.h"

#include <algorithm>
#include <atomic>
#include <bit>
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
#include "engine_internal.h"

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
namespace detail {

thread_local Launch* tl_launch = nullptr;

namespace {

// Reserved per thread; only touched pages become memory (fiber.h). Kernel frames (~200 fp32 accumulators plus
// locals) take tens of KiB, and the last arriver of a wgmma computes the whole warpgroup's product on its stack.
constexpr size_t kFiberStackBytes = 1024 * 1024;
constexpr uint64_t kClockCheckPoints = 1024;   // scheduling points between two reads of the wall clock (timeout)
constexpr size_t kReportLines = 160;           // the report lists at most this many lane groups
// Every resident thread is a fiber whose stack (a mapping, plus its guard page) lives until the launch ends: past
// about 32 K of them the process's map limit (vm.max_map_count, 65530 by default) makes FiberStack abort. Larger
// grids run in waves of at most this many resident threads.
constexpr uint64_t kMaxFibers = 24 * 1024;
constexpr size_t kWindowAlign = 4096;          // windows page-aligned: a generic address and its shared-window
                                               // address agree modulo any tile alignment (1024 for the swizzle)

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

}  // namespace

void Launch::start_cta(int slot) {  // the grid's next CTA, in `slot`, with fresh shared memory and state
  Cta& c = ctas[slot];
  const uint64_t i = next_cta++;
  c.linear = static_cast<int>(i);
  c.idx = Dim3{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
               static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
  std::memset(c.window, 0xff, kSmemWindowBytes);  // NaN in bf16/fp16/fp32: unwritten reads show
  const int warps = warps_per_cta, warpgroups = (block_threads + kWarpgroupSize - 1) / kWarpgroupSize;
  c.live = block_threads;
  c.live_warps = warps;
  c.warp_live.assign(warps, 0);
  c.warpgroup_live.assign(warpgroups, 0);
  for (int t = 0; t < block_threads; ++t) ++c.warp_live[t / kWarpSize], ++c.warpgroup_live[t / kWarpgroupSize];
  c.warps.assign(warps, Group{});
  c.warpgroups.assign(warpgroups, Group{});
  for (auto [groups, size] : {std::pair{&c.warps, kWarpSize}, std::pair{&c.warpgroups, kWarpgroupSize}}) {
    for (Group& g : *groups) g.in.assign(size, nullptr), g.out.assign(size, nullptr), g.present.assign(size, 0);
  }
  for (Barrier& b : c.barriers) b = Barrier{};
  for (int t = 0; t < block_threads; ++t) {
    Fiber& f = fibers[size_t(slot) * block_threads + t];
    f.cta = slot;
    f.tid = t;
    f.wait = Wait::kRunning;
    f.spin_epoch = ~uint64_t(0);
    f.spins = 0;
    f.what[0] = '\0';
    emu_common::fiber_prepare(f.context, f.stack, &fiber_entry);
    if (t % kWarpSize == 0) set_warp_priority(f, random() | kWorkingPriority);
    set_runnable(f, true);
  }
  live += block_threads;
  ++epoch;
}

// Frees the slots of CTAs whose threads have all exited and starts the grid's next CTAs in them. Asynchronous work
// a CTA left pending is dropped, as at the end of a launch (the kernel exited without waiting for it).
bool Launch::retire_finished() {
  for (const int slot : finished) {
    for (auto it = queue.begin(); it != queue.end();) {
      if (it->second.cta != slot) {
        ++it;
        continue;
      }
      due_of.erase(it->second.ticket);
      it = queue.erase(it);
    }
    Cta& c = ctas[slot];
    async_cta = slot;  // the models' destructors may look at their CTA
    for (const StateEntry& e : c.state) e.destroy(e.object);
    async_cta = -1;
    c.state.clear();
    c.linear = -1;
    for (int t = 0; t < block_threads; ++t) {  // measured before the next CTA reuses the stacks
      const FiberStack& stack = fibers[size_t(slot) * block_threads + t].stack;
      stats.max_stack_bytes = std::max<uint64_t>(stats.max_stack_bytes, stack.resident_bytes());
    }
    if (next_cta < grid_ctas) start_cta(slot);
  }
  finished.clear();
  return error.empty();
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

bool Launch::run_queued(std::map<std::pair<uint64_t, uint64_t>, AsyncItem>::iterator it) {  // false on failure
  AsyncItem item = std::move(it->second);
  queue.erase(it);
  due_of.erase(item.ticket);
  try {
    run_item(item);
  } catch (const Failure&) {
    current = nullptr;
    async_cta = -1;
    return false;
  }
  return error.empty();
}

bool Launch::run_due() {  // false after a failure
  while (!queue.empty() && queue.begin()->first.first <= points) {
    if (!run_queued(queue.begin())) return false;
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

int Launch::next_round_robin() {  // the next runnable fiber after the last one picked, in fiber order
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
  return -1;
}

int Launch::pick_greedy(bool lowest) {  // kLowestFirst / kHighestFirst
  const int words = static_cast<int>(working_warp_bits.size());
  for (int k = 0; k < words; ++k) {
    const int wi = lowest ? k : words - 1 - k;
    const uint64_t word = working_warp_bits[wi];
    if (word == 0) continue;
    const int w = wi * 64 + (lowest ? std::countr_zero(word) : 63 - std::countl_zero(word));
    const int first = w / warps_per_cta * block_threads + w % warps_per_cta * kWarpSize;
    const int lanes = std::min(kWarpSize, block_threads - w % warps_per_cta * kWarpSize);
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = fibers[first + (lowest ? l : lanes - 1 - l)];
      if (f.runnable_pos >= 0 && f.wait != Wait::kSpin) return static_cast<int>(&f - fibers.data());
    }
    std::abort();  // warp_working out of step with the fibers: an engine bug
  }
  return next_round_robin();  // every runnable fiber spins: each in turn, so the one whose wait ended gets to run
}

int Launch::pick() {
  if (options.schedule == Schedule::kRoundRobin) {
    const int i = next_round_robin();
    if (i >= 0) return i;
  }
  if (greedy) return pick_greedy(options.schedule == Schedule::kLowestFirst);
  if (by_priority) {
    if (random() % kPriorityRedrawPoints == 0) {
      set_warp_priority(fibers[runnable[random() % runnable.size()]], random() | kWorkingPriority);
    }
    const int w = ready_warps.rbegin()->second;  // the highest warp with runnable lanes: one of them at random
    const int first = w / warps_per_cta * block_threads + w % warps_per_cta * kWarpSize;
    const int lanes = std::min(kWarpSize, block_threads - w % warps_per_cta * kWarpSize);
    int pick = static_cast<int>(random() % warp_runnable[w]);
    for (int l = 0; l < lanes; ++l) {
      if (fibers[first + l].runnable_pos >= 0 && pick-- == 0) return first + l;
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
  while (error.empty()) {
    if (!finished.empty() && !retire_finished()) break;
    if (live == 0) break;
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
      if (!queue.empty()) {
        // Nothing can run before the copy engine delivers: it does so now, any pending operation (they are not
        // ordered), not the one due first: a reader that should have waited for another one still reads stale data.
        auto it = queue.begin();
        std::advance(it, static_cast<long>(random() % queue.size()));
        if (!run_queued(it)) break;
        continue;
      }
      error = "deadlock: no thread can make progress and no asynchronous work is pending; every live warp waits:" +
              report();
      if (next_cta < grid_ctas) {
        error += "\n  " + std::to_string(grid_ctas - next_cta) + " CTAs of the grid have not started (at most " +
                 std::to_string(ctas.size()) + " resident at once; one waiting for a CTA that cannot start is a " +
                 "deadlock on the hardware too)";
      }
      break;
    }
    current = &fibers[pick()];
    const unsigned t = static_cast<unsigned>(current->tid);
    g_thread_idx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    const Dim3& b = ctas[current->cta].idx;
    g_block_idx = {b.x, b.y, b.z};
    watchdog.beat(ctas[current->cta].linear, current->tid);
    ++stats.fiber_switches;
    emu_common::fiber_switch(scheduler, current->context);
    current = nullptr;
  }
}

}  // namespace detail

using namespace detail;


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
int linear_block() {
  Launch& l = current_launch();
  return l.ctas[l.cta_index("linear_block")].linear;
}

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
    const int owner = l.slot_of(smem_owner(generic));
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
  return l.slot_state(l.cta_index("cta_state"), key, make, destroy);
}

void* cta_state_raw_of(int cta, const void* key, void* (*make)(), void (*destroy)(void*)) {
  Launch& l = current_launch();
  const int slot = cta >= 0 ? l.slot_of(cta) : -1;
  if (slot < 0) l.fail_here("cta_state of CTA " + std::to_string(cta) + ", which is not resident");
  return l.slot_state(slot, key, make, destroy);
}

int smem_owner(const void* generic) {
  if (tl_launch == nullptr) return -1;
  const auto p = reinterpret_cast<uintptr_t>(generic);
  for (const Cta& c : tl_launch->ctas) {
    const auto base = reinterpret_cast<uintptr_t>(c.window);
    if (p >= base && p - base < kSmemWindowBytes) return c.linear;
  }
  return -1;
}

int registers_per_thread() { return current_launch().options.registers_per_thread; }

int to_c_status(const std::string& message, char* error, int error_bytes) {
  if (message.empty()) return 0;
  if (error != nullptr && error_bytes > 0) {
    std::snprintf(error, static_cast<size_t>(error_bytes), "%s", message.c_str());
  }
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
  // Resident CTAs: as many as the option asks, at most what fits in kMaxFibers threads, at most the grid.
  const uint64_t fit = kMaxFibers / threads;
  if (options.max_resident_ctas < 0 || uint64_t(options.max_resident_ctas) > fit) {
    return "max_resident_ctas " + std::to_string(options.max_resident_ctas) + " with " + std::to_string(threads) +
           "-thread CTAs: the model holds at most " + std::to_string(kMaxFibers) + " threads at once (" +
           std::to_string(fit) + " CTAs; 0 = that many)";
  }
  const uint64_t slots = std::min(options.max_resident_ctas > 0 ? uint64_t(options.max_resident_ctas) : fit,
                                  num_ctas);
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
  l.grid_ctas = num_ctas;
  const int warps = (l.block_threads + kWarpSize - 1) / kWarpSize;
  l.warps_per_cta = warps;
  l.ctas.resize(slots);
  l.fibers.resize(slots * threads);
  l.runnable_bits.assign((l.fibers.size() + 63) / 64, 0);
  l.by_priority = options.schedule == Schedule::kRandomPriority;
  l.warp_priority.assign(slots * warps, 0);
  l.warp_runnable.assign(slots * warps, 0);
  l.greedy = options.schedule == Schedule::kLowestFirst || options.schedule == Schedule::kHighestFirst;
  l.warp_working.assign(slots * warps, 0);
  l.working_warp_bits.assign((slots * warps + 63) / 64, 0);
  for (Cta& c : l.ctas) c.window = static_cast<uint8_t*>(std::aligned_alloc(kWindowAlign, kSmemWindowBytes));
  for (Fiber& f : l.fibers) f.stack = FiberStack(kFiberStackBytes);
  for (uint64_t slot = 0; slot < slots; ++slot) l.start_cta(static_cast<int>(slot));
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
  for (const Fiber& f : l.fibers) {
    l.stats.max_stack_bytes = std::max<uint64_t>(l.stats.max_stack_bytes, f.stack.resident_bytes());
  }
  for (Cta& c : l.ctas) std::free(c.window);
  if (stats != nullptr) *stats = l.stats;
  return l.error;
}

}  // namespace flashcore::cuda_emu
