// The harness runtime: fibers, the block barrier, wave rendezvous, LDS and bounds checks (see emu.h).
#include "emu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../emu_common/fiber.h"

namespace flashcore::emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per fiber: a kernel frame plus one MFMA's scratch, with room to spare

struct Fiber {
  emu_common::FiberStack stack;
  emu_common::FiberContext context;
  int tid = 0;
  bool done = false;
};

struct WaveSync {
  const char* name = nullptr;
  const void* in[kWaveSize];
  void* out[kWaveSize];
  int arrived = 0;
  uint64_t generation = 0;
};

struct Worker;  // one OS thread running blocks one after another

thread_local Worker* tl_worker = nullptr;

struct Worker {
  std::vector<Fiber> fibers;
  emu_common::FiberContext scheduler_context;
  const std::function<void()>* kernel = nullptr;
  Schedule schedule = Schedule::kRoundRobin;
  int current = -1;
  int block[3] = {0, 0, 0};
  int block_threads = 0, live = 0;
  std::unique_ptr<uint8_t[]> lds{new uint8_t[kLdsBytes]};
  std::vector<WaveSync> waves;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  uint64_t events = 0;  // arrivals and completions: a scheduler round without any means deadlock
  bool failed = false;
  std::string error;
  LaunchStats stats;

  Fiber& self() { return fibers[current]; }

  void yield_to_scheduler() {
    ++stats.fiber_switches;
    emu_common::fiber_switch(self().context, scheduler_context);
  }

  void resume(int index) {
    current = index;
    emu_common::fiber_switch(scheduler_context, fibers[index].context);
    current = -1;
  }

  [[noreturn]] void fail_here(const std::string& message) {
    if (!failed) {
      failed = true;
      char where[96];
      std::snprintf(where, sizeof where, "block (%d, %d, %d) thread %d: ", block[0], block[1], block[2],
                    current >= 0 ? fibers[current].tid : -1);
      error = where + message;
    }
    for (;;) yield_to_scheduler();  // never resumed: the scheduler abandons a failed block
  }

  static void entry() {  // first code a fiber runs
    Worker* w = tl_worker;
    (*w->kernel)();
    w->self().done = true;
    --w->live;
    ++w->events;
    if (w->barrier_arrived > 0 && w->barrier_arrived == w->live) {  // the lanes still waiting were the last ones
      w->barrier_arrived = 0;
      ++w->barrier_generation;
    }
    for (;;) w->yield_to_scheduler();
  }

  void prepare_fiber(int index) {
    Fiber& f = fibers[index];
    if (f.stack.size() == 0) f.stack = emu_common::FiberStack(kStackBytes);
    f.tid = index;
    f.done = false;
    emu_common::fiber_prepare(f.context, f.stack, &Worker::entry);
  }

  // Runs one block to completion; false (with `error` set) if it failed.
  bool run_block(int bx, int by, int bz) {
    block[0] = bx, block[1] = by, block[2] = bz;
    std::memset(lds.get(), 0xff, kLdsBytes);
    waves.assign(block_threads / kWaveSize, WaveSync{});
    barrier_arrived = 0;
    live = block_threads;
    for (int t = 0; t < block_threads; ++t) prepare_fiber(t);
    const int num_waves = block_threads / kWaveSize;
    while (live > 0 && !failed) {
      const uint64_t before = events;
      if (schedule == Schedule::kRoundRobin) {
        for (int t = 0; t < block_threads && !failed; ++t) {
          if (!fibers[t].done) resume(t);
        }
      } else {
        // One wave at a time, as far as it gets (until it waits for another wave at a barrier), in ascending or
        // descending wave order: the interleavings furthest from lock step, where a missing barrier shows.
        for (int i = 0; i < num_waves && !failed; ++i) {
          const int wave = schedule == Schedule::kWavesAscending ? i : num_waves - 1 - i;
          for (uint64_t mark = ~uint64_t(0); mark != events && !failed;) {
            mark = events;
            for (int t = wave * kWaveSize; t < (wave + 1) * kWaveSize && !failed; ++t) {
              if (!fibers[t].done) resume(t);
            }
          }
        }
      }
      if (live > 0 && !failed && events == before) {
        failed = true;
        error = "deadlock: every live lane of block (" + std::to_string(bx) + ", " + std::to_string(by) + ", " +
                std::to_string(bz) + ") waits at a barrier or wave collective that cannot complete (" +
                std::to_string(live) + " lanes live)";
      }
    }
    ++stats.blocks;
    return !failed;
  }
};

Worker& worker() {
  if (tl_worker == nullptr || tl_worker->current < 0) {
    std::fprintf(stderr, "flashcore emu: a kernel builtin was called outside a launched kernel\n");
    std::abort();
  }
  return *tl_worker;
}

std::mutex g_ranges_mutex;
const GlobalRange* g_ranges = nullptr;
int g_num_ranges = 0;

}  // namespace

int thread_id() { return worker().self().tid; }

int block_id(int dim) { return worker().block[dim]; }

uint8_t* lds(size_t bytes) {
  Worker& w = worker();
  if (bytes > kLdsBytes) w.fail_here("kernel asks for " + std::to_string(bytes) + " bytes of LDS; gfx942 has 65536");
  return w.lds.get();
}

void fail(const std::string& message) { worker().fail_here(message); }

void check_global(const void* p, size_t bytes, bool write) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < g_num_ranges; ++i) {
    const auto b = reinterpret_cast<uintptr_t>(g_ranges[i].begin);
    if (a >= b && a + bytes <= b + g_ranges[i].bytes) {
      if (write && !g_ranges[i].writable) break;
      return;
    }
  }
  char message[160];
  std::snprintf(message, sizeof message, "global %s of %zu bytes at %p is outside every %s tensor of the launch",
                write ? "store" : "load", bytes, p, write ? "writable" : "registered");
  worker().fail_here(message);
}

void block_barrier() {
  Worker& w = worker();
  ++w.stats.barriers;
  ++w.events;
  if (++w.barrier_arrived == w.live) {  // exited lanes no longer count, as exited waves do not on the hardware
    w.barrier_arrived = 0;
    ++w.barrier_generation;
    return;
  }
  const uint64_t generation = w.barrier_generation;
  while (w.barrier_generation == generation) w.yield_to_scheduler();
}

void wave_sync(const char* name, const void* in, void* out, Compute compute, const void* ctx) {
  Worker& w = worker();
  const int tid = w.self().tid;
  WaveSync& s = w.waves[tid / kWaveSize];
  const int lane = tid % kWaveSize;
  ++w.events;
  if (s.arrived == 0) {
    s.name = name;
  } else if (std::strcmp(s.name, name) != 0) {
    w.fail_here(std::string("wave divergence: lane ") + std::to_string(lane) + " reached " + name +
                " while other lanes of its wave wait in " + s.name);
  }
  s.in[lane] = in;
  s.out[lane] = out;
  if (++s.arrived == kWaveSize) {
    ++w.stats.wave_collectives;
    compute(ctx, s.in, s.out);
    s.arrived = 0;
    ++s.generation;
    return;
  }
  const uint64_t generation = s.generation;
  while (s.generation == generation) w.yield_to_scheduler();
}

int readfirstlane(int v) {
  return wave_collective<int, int>("v_readfirstlane_b32", v, [](const int* const* ins, int* const* outs) {
    for (int l = 0; l < kWaveSize; ++l) *outs[l] = *ins[0];
  });
}

void wait_counter(const int32_t* counter, int32_t value) {
  check_global(counter, 4, false);
  const auto start = std::chrono::steady_clock::now();
  std::atomic_ref<int32_t> flag(*const_cast<int32_t*>(counter));  // read only
  while (flag.load(std::memory_order_acquire) != value) {
    if (std::chrono::steady_clock::now() - start > std::chrono::duration<double>(kSpinSeconds)) {
      worker().fail_here("counter wait never satisfied (blocks waiting on each other, or on one never launched)");
    }
    std::this_thread::yield();
  }
}

int to_c_status(const std::string& message, char* error, int error_bytes) {
  if (message.empty()) return 0;
  std::snprintf(error, static_cast<size_t>(error_bytes), "%s", message.c_str());
  return -1;
}

std::string launch(Dim3 grid, int block_threads, const std::function<void()>& kernel, const GlobalRange* ranges,
                   int num_ranges, int os_threads, LaunchStats* stats, Schedule schedule, bool reverse_blocks) {
  if (block_threads <= 0 || block_threads % kWaveSize != 0) return "block size must be a multiple of 64";
  const std::lock_guard<std::mutex> one_launch_at_a_time(g_ranges_mutex);
  g_ranges = ranges;
  g_num_ranges = num_ranges;
  const long total = static_cast<long>(grid.x) * grid.y * grid.z;
  std::atomic<long> next{0};
  std::mutex result_mutex;
  std::string first_error;
  LaunchStats sum;
  auto run = [&]() {
    Worker w;
    w.kernel = &kernel;
    w.schedule = schedule;
    w.block_threads = block_threads;
    w.fibers.resize(block_threads);
    tl_worker = &w;
    for (long n; (n = next.fetch_add(1)) < total;) {
      const long i = reverse_blocks ? total - 1 - n : n;
      const int bx = static_cast<int>(i % grid.x), by = static_cast<int>(i / grid.x % grid.y),
                bz = static_cast<int>(i / (static_cast<long>(grid.x) * grid.y));
      if (!w.run_block(bx, by, bz)) {
        next.store(total);
        break;
      }
    }
    tl_worker = nullptr;
    const std::lock_guard<std::mutex> lock(result_mutex);
    if (w.failed && first_error.empty()) first_error = w.error;
    sum.blocks += w.stats.blocks;
    sum.fiber_switches += w.stats.fiber_switches;
    sum.wave_collectives += w.stats.wave_collectives;
    sum.barriers += w.stats.barriers;
  };
  const int n = static_cast<int>(std::max<long>(1, std::min<long>(os_threads, total)));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(run);
  run();
  for (auto& t : pool) t.join();
  g_ranges = nullptr;
  g_num_ranges = 0;
  if (stats != nullptr) *stats = sum;
  return first_error;
}

}  // namespace flashcore::emu
