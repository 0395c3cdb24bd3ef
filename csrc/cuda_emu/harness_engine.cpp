// Small kernels that exercise the sm_90a model's engine (engine.cpp), its CUDA prelude and its mbarrier / sync
// models, with C entry points for tests/test_cuda_emu_engine.py. Built with -include csrc/cuda_emu/prelude.h
// -DFLASHCORE_SM90_EMU, like the real kernels. Every entry point takes a RunSpec (schedule, seed, limits; the
// launch's statistics come back in it) and returns 0, or -1 with the launch's error in `error`.
#include <cuda_bf16.h>  // the CUDA headers' 16-bit types, compiled for the host under the prelude
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "cuda/ptx/mbarrier.cuh"
#include "cuda/ptx/sync_ext.cuh"
#include "cuda_emu/emu.h"

namespace emu = flashcore::cuda_emu;
namespace ptx = flashcore::sm90::ptx;

namespace {

struct RunSpec {  // mirrored by tests/test_cuda_emu_engine.py (RunSpec)
  uint64_t seed;
  int32_t schedule;
  int32_t max_async_delay;
  double timeout_seconds;
  int32_t registers_per_thread;
  int32_t max_resident_ctas;
  uint64_t stats[6];  // ctas, fiber_switches, collectives, barriers, async_ops, max_stack_bytes
};

int run(RunSpec* spec, emu::Dim3 grid, emu::Dim3 block, size_t smem, const std::function<void()>& kernel,
        char* error, int error_bytes) {
  emu::LaunchOptions options;
  options.schedule = static_cast<emu::Schedule>(spec->schedule);
  options.seed = spec->seed;
  options.max_async_delay = spec->max_async_delay;
  options.timeout_seconds = spec->timeout_seconds;
  options.registers_per_thread = spec->registers_per_thread;
  options.max_resident_ctas = spec->max_resident_ctas;
  emu::LaunchStats stats;
  const std::string message = emu::launch(grid, block, smem, kernel, options, &stats);
  const uint64_t values[6] = {stats.ctas, stats.fiber_switches, stats.collectives, stats.barriers, stats.async_ops,
                              stats.max_stack_bytes};
  std::memcpy(spec->stats, values, sizeof values);
  return emu::to_c_status(message, error, error_bytes);
}

int lane_id() { return static_cast<int>(threadIdx.x) % warpSize; }

constexpr int kShuffleOutputs = 15;  // results per thread of fc_shuffles (the test's table lists them)

}  // namespace

extern "C" {

// Every shuffle kind on every lane: out[(cta * threads + thread) * kShuffleOutputs + k], values cta * 1000 + thread.
int fc_shuffles(RunSpec* spec, int ctas, int threads, int32_t* out, char* error, int error_bytes) {
  return run(spec, {static_cast<unsigned>(ctas)}, {static_cast<unsigned>(threads)}, 0, [=] {
    const int t = static_cast<int>(threadIdx.x), lane = lane_id();
    const int v = static_cast<int>(blockIdx.x) * 1000 + t;
    int32_t* o = out + (static_cast<int>(blockIdx.x) * threads + t) * kShuffleOutputs;
    o[0] = __shfl_sync(0xffffffffu, v, (lane * 7 + 3) % 32);
    for (int k = 0; k < 5; ++k) o[1 + k] = __shfl_xor_sync(0xffffffffu, v, 1 << k);
    o[6] = __shfl_down_sync(0xffffffffu, v, 3);
    o[7] = __shfl_up_sync(0xffffffffu, v, 5);
    o[8] = __shfl_sync(0xffffffffu, v, 5, 8);
    o[9] = __shfl_xor_sync(0xffffffffu, v, 4, 4);
    o[10] = __shfl_down_sync(0xffffffffu, v, 1, 16);
    o[11] = static_cast<int32_t>(__ballot_sync(0xffffffffu, lane % 3 == 0));
    o[12] = static_cast<int32_t>(__shfl_xor_sync(0xffffffffu, static_cast<float>(v) + 0.5f, 8));
    const __nv_bfloat162 b = __floats2bfloat162_rn(static_cast<float>(v % 256), 1.0f);  // exact in bf16
    o[13] = static_cast<int32_t>(__low2float(__shfl_xor_sync(0xffffffffu, b, 2)));
    o[14] = static_cast<int32_t>(__half2float(__shfl_down_sync(0xffffffffu, __float2half(v % 1024), 2)));
  }, error, error_bytes);
}

// Each lane writes its word of shared memory and reads its neighbour's after __syncwarp (or without, `sync` = 0).
int fc_syncwarp(RunSpec* spec, int sync, int32_t* out, char* error, int error_bytes) {
  return run(spec, {1}, {64}, 256, [=] {
    auto* words = reinterpret_cast<int32_t*>(emu::dynamic_smem());
    const int t = static_cast<int>(threadIdx.x);
    words[t] = t;
    if (sync) __syncwarp();
    out[t] = words[(t / 32) * 32 + (t + 1) % 32];
  }, error, error_bytes);
}

// Producer warpgroup writes a round's values, bar.arrive(1); consumers bar.sync(1), read, bar.arrive(2); the
// producers bar.sync(2) before the next round. Then warps 1..7 exit and warp 0 passes __syncthreads alone.
int fc_named_barriers(RunSpec* spec, int rounds, int32_t* out, char* error, int error_bytes) {
  return run(spec, {2}, {256}, 128 * 4, [=] {
    auto* buffer = reinterpret_cast<int32_t*>(emu::dynamic_smem());
    const int t = static_cast<int>(threadIdx.x);
    int32_t* o = out + blockIdx.x * 128 * rounds;
    for (int r = 0; r < rounds; ++r) {
      if (t < 128) {
        if (r > 0) ptx::named_barrier_sync(2, 256);
        buffer[t] = r * 1000 + t;
        ptx::named_barrier_arrive(1, 256);
      } else {
        ptx::named_barrier_sync(1, 256);
        o[r * 128 + (t - 128)] = buffer[255 - t];
        ptx::named_barrier_arrive(2, 256);
      }
    }
    __syncthreads();
    if (t >= 32) return;
    __syncthreads();  // only warp 0 is live: exited warps do not count
  }, error, error_bytes);
}

// mbarrier parity semantics on a fresh barrier and across two phases, one thread: out[0..7].
int fc_mbarrier_parity(RunSpec* spec, int32_t* out, char* error, int error_bytes) {
  return run(spec, {1}, {32}, 64, [=] {
    auto* bar = reinterpret_cast<uint64_t*>(emu::dynamic_smem());
    if (threadIdx.x != 0) return;
    ptx::mbarrier_init(bar, 2);
    out[0] = ptx::mbarrier_try_wait(bar, 1);  // fresh: the "previous" phase counts as complete
    out[1] = ptx::mbarrier_try_wait(bar, 0);
    ptx::mbarrier_arrive(bar);
    out[2] = ptx::mbarrier_try_wait(bar, 0);  // one of two arrivals
    ptx::mbarrier_arrive_expect_tx(bar, 16);
    out[3] = ptx::mbarrier_try_wait(bar, 0);  // arrivals in, 16 bytes pending
    emu::mbarrier_complete_tx(bar, 16);
    out[4] = ptx::mbarrier_try_wait(bar, 0);  // phase 0 complete
    out[5] = ptx::mbarrier_try_wait(bar, 1);  // phase 1 is current
    emu::mbarrier_complete_tx(bar, 8);        // bytes may land before expect_tx: the count goes negative
    ptx::mbarrier_arrive_expect_tx(bar, 8);
    ptx::mbarrier_arrive(bar);
    out[6] = ptx::mbarrier_try_wait(bar, 1);
    out[7] = ptx::mbarrier_try_wait(bar, 0);
  }, error, error_bytes);
}

// A TMA-like ring: one producer thread copies `rounds` tiles of 32 int32 from global into a 2-stage shared ring
// with asynchronous work that signals complete_tx; one consumer warp per CTA sums each tile into out[cta][round].
// wait = 0 leaves out the consumer's wait on the full barrier, wait = 2 the producer's on the empty barrier (the
// races the model must expose).
int fc_mbarrier_ring(RunSpec* spec, int ctas, int rounds, const int32_t* src, int wait, int32_t* out, char* error,
                     int error_bytes) {
  constexpr int kStages = 2, kTile = 32;
  constexpr uint32_t kTileBytes = kTile * sizeof(int32_t);
  return run(spec, {static_cast<unsigned>(ctas)}, {64}, 1024, [=] {
    uint8_t* smem = emu::dynamic_smem();
    auto* full = reinterpret_cast<uint64_t*>(smem);
    auto* empty = full + kStages;
    auto* ring = reinterpret_cast<int32_t*>(smem + 64);
    const int t = static_cast<int>(threadIdx.x), cta = static_cast<int>(blockIdx.x);
    if (t == 0) {
      for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&full[s], 1), ptx::mbarrier_init(&empty[s], 1);
      ptx::fence_mbarrier_init();
    }
    __syncthreads();
    if (t == 0) {  // producer
      for (int r = 0; r < rounds; ++r) {
        const int s = r % kStages;
        const uint32_t phase = (r / kStages) & 1;
        if (wait != 2) ptx::mbarrier_wait(&empty[s], phase ^ 1);
        ptx::mbarrier_arrive_expect_tx(&full[s], kTileBytes);
        const int32_t* from = src + (cta * rounds + r) * kTile;
        int32_t* to = ring + s * kTile;
        uint64_t* bar = &full[s];
        emu::enqueue_async([=] {
          std::memcpy(to, from, kTileBytes);
          emu::mbarrier_complete_tx(bar, kTileBytes);
        });
      }
    } else if (t >= 32) {  // consumer warp
      for (int r = 0; r < rounds; ++r) {
        const int s = r % kStages;
        if (wait != 0) ptx::mbarrier_wait(&full[s], (r / kStages) & 1);
        int32_t v = ring[s * kTile + (t - 32)];
        for (int k = 16; k > 0; k /= 2) v += __shfl_xor_sync(0xffffffffu, v, k);
        if (t == 32) out[cta * rounds + r] = v;
        if (wait == 0) ptx::mbarrier_wait(&full[s], (r / kStages) & 1);  // too late for the read: keeps phases in step
        __syncwarp();
        if (t == 32) ptx::mbarrier_arrive(&empty[s]);
      }
    }
  }, error, error_bytes);
}

// Misuse of one mbarrier (expected to fail): 0 use before init, 1 too many arrivals, 2 more bytes than expected,
// 3 a store over the barrier, 4 parity 2.
int fc_mbarrier_misuse(RunSpec* spec, int kind, char* error, int error_bytes) {
  return run(spec, {1}, {32}, 64, [=] {
    auto* bar = reinterpret_cast<uint64_t*>(emu::dynamic_smem());
    if (threadIdx.x != 0) return;
    if (kind != 0) ptx::mbarrier_init(bar, 1);
    if (kind == 1) ptx::mbarrier_arrive_expect_tx(bar, 8), ptx::mbarrier_arrive(bar), ptx::mbarrier_arrive(bar);
    if (kind == 2) ptx::mbarrier_arrive_expect_tx(bar, 8), emu::mbarrier_complete_tx(bar, 12);
    if (kind == 3) *bar = 0;
    if (kind == 4) ptx::mbarrier_try_wait(bar, 2);
    ptx::mbarrier_arrive(bar);
  }, error, error_bytes);
}

// Deadlock: warps 1-3 wait at bar.sync 1 for 128 threads (warp 0 never comes), warp 0 lane 0 spins on an
// mbarrier nobody arrives at, the rest of warp 0 waits in __syncwarp for it.
int fc_deadlock(RunSpec* spec, char* error, int error_bytes) {
  return run(spec, {1}, {128}, 64, [=] {
    auto* bar = reinterpret_cast<uint64_t*>(emu::dynamic_smem());
    if (threadIdx.x == 0) ptx::mbarrier_init(bar, 1);
    __syncthreads();
    if (threadIdx.x >= 32) ptx::named_barrier_sync(1, 128);
    if (threadIdx.x == 0) ptx::mbarrier_wait(bar, 0);
    __syncwarp();
  }, error, error_bytes);
}

// Lanes 0-15 shuffle while lanes 16-31 reach __syncwarp; kind 1: a shuffle with a partial member mask; kind 2:
// lanes 0-15 exit first.
int fc_divergent(RunSpec* spec, int kind, char* error, int error_bytes) {
  return run(spec, {1}, {32}, 0, [=] {
    if (kind == 1) (void)__shfl_sync(0x0000ffffu, 1, 0);
    if (kind == 2 && threadIdx.x < 16) return;  // exits while the others shuffle
    if (threadIdx.x < 16) {
      (void)__shfl_sync(0xffffffffu, 1, 0);
    } else {
      __syncwarp();
    }
  }, error, error_bytes);
}

// Every thread of `ctas` CTAs takes a ticket (atomicAdd) after a few spins: order[ticket] = global thread index.
int fc_ticket_order(RunSpec* spec, int ctas, int threads, int32_t* counter, int32_t* order, char* error,
                    int error_bytes) {
  return run(spec, {static_cast<unsigned>(ctas)}, {static_cast<unsigned>(threads)}, 0, [=] {
    const int g = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    for (int i = 0; i < g % 3; ++i) emu::spin("warm-up");
    order[atomicAdd(counter, 1)] = g;
  }, error, error_bytes);
}

// The asynchronous queue's ticket calls: lane 0 of each warp enqueues a copy, checks it has not run, forces it
// (run_async_now, as cp.async.bulk.wait_group does) and the copy enqueues a second one from inside asynchronous
// work, which the warp waits for with async_done. out[warp] = 1 when every check held, then the copied values.
int fc_async_tickets(RunSpec* spec, int32_t* out, char* error, int error_bytes) {
  return run(spec, {1}, {128}, 64, [=] {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 != 0) return;
    int32_t* first = out + 4 + warp;
    int32_t* second = out + 8 + warp;
    const uint64_t ticket = emu::enqueue_async([=] {
      *first = 100 + warp;
      emu::enqueue_async([=] { *second = 200 + emu::linear_block() + warp; });
    });
    bool ok = !emu::async_done(ticket) && *first == 0;
    emu::run_async_now(ticket);
    ok = ok && emu::async_done(ticket) && *first == 100 + warp;
    while (*second == 0) emu::spin("waiting for the chained copy");
    out[warp] = ok;
  }, error, error_bytes);
}

// Every thread takes `iterations` tickets, one per __syncwarp'd step: order[ticket] = the thread's global warp.
// How far warps run ahead of each other shows in the lengths of runs of one warp in `order`.
int fc_warp_runs(RunSpec* spec, int ctas, int iterations, int32_t* counter, int32_t* order, char* error,
                 int error_bytes) {
  return run(spec, {static_cast<unsigned>(ctas)}, {128}, 0, [=] {
    const int warp = static_cast<int>(blockIdx.x * 4 + threadIdx.x / 32);
    for (int i = 0; i < iterations; ++i) {
      __syncwarp();
      order[atomicAdd(counter, 1)] = warp;
    }
  }, error, error_bytes);
}

// Never finishes but keeps making progress (an atomic per iteration): only the timeout stops it.
int fc_forever(RunSpec* spec, int32_t* counter, char* error, int error_bytes) {
  return run(spec, {1}, {32}, 0, [=] {
    for (;;) {
      atomicAdd(counter, 1);
      emu::spin("busy loop");
    }
  }, error, error_bytes);
}

// Thread 5 of CTA 1 loops forever without a scheduling point: only the watchdog can stop it (by aborting).
int fc_endless(RunSpec* spec, volatile int32_t* flag, char* error, int error_bytes) {
  return run(spec, {2}, {32}, 0, [=] {
    if (blockIdx.x == 1 && threadIdx.x == 5) {
      while (*flag == 0) {
      }
    }
  }, error, error_bytes);
}

// setmaxnreg on a 384-thread CTA: warpgroup 0 dec<dec_regs>, warpgroups 1-2 inc<inc_regs> (the kernels' split);
// split = 1 makes the two halves of warpgroup 0 ask for different counts.
int fc_setmaxnreg(RunSpec* spec, int variant, char* error, int error_bytes) {
  return run(spec, {1}, {384}, 0, [=] {
    const int wg = static_cast<int>(threadIdx.x) / 128;
    if (wg == 0) {
      if (variant == 2 && threadIdx.x >= 64) {
        ptx::setmaxnreg_dec<48>();
      } else {
        ptx::setmaxnreg_dec<40>();
      }
    } else if (variant == 1) {
      ptx::setmaxnreg_inc<240>();  // 2 x 72 x 128 registers wanted, 128 x 128 freed: never granted
    } else {
      ptx::setmaxnreg_inc<232>();  // 2 x 64 x 128 wanted, (168 - 40) x 128 freed: balanced
    }
  }, error, error_bytes);
}

// CTA c waits (ld.acquire poll) until the semaphore equals c, adds its values, releases c + 1 (the backward's
// deterministic dQ order). release = 0: nobody releases, the pollers deadlock. Also red.add.v2.f32 into sums.
int fc_semaphore(RunSpec* spec, int ctas, int release, int32_t* sem, int32_t* order, float* sums, char* error,
                 int error_bytes) {
  return run(spec, {static_cast<unsigned>(ctas)}, {64}, 0, [=] {
    const int c = static_cast<int>(blockIdx.x), t = static_cast<int>(threadIdx.x);
    ptx::red_add_f32x2(sums + 2 * (t % 4), 1.0f, 2.0f);
    if (t == 0) {
      while (ptx::ld_acquire_gpu(sem) != (release ? c : c + 1)) {
      }
      order[c] = atomicAdd(sem + 1, 1);
      __threadfence();
      if (release) ptx::red_release_gpu_add(sem, 1);
    }
    __syncthreads();
  }, error, error_bytes);
}

// A lane fails on purpose (the message must name its CTA, warp and lane); then shared-memory checks:
// 1 reads the fresh window (0xff bytes), 2 takes a pointer past the launch's shared memory,
// 3 converts another CTA's shared address.
int fc_smem_and_fail(RunSpec* spec, int kind, uint32_t* out, char* error, int error_bytes) {
  return run(spec, {3}, {96}, 4096, [=] {
    const int t = static_cast<int>(threadIdx.x), c = static_cast<int>(blockIdx.x);
    if (kind == 0 && c == 1 && t == 69) emu::fail("on purpose");
    if (kind == 1 && t == 0) {
      out[c] = *reinterpret_cast<uint32_t*>(emu::dynamic_smem() + 4092);
      out[3 + c] = emu::smem_address(emu::dynamic_smem());
    }
    if (kind == 2 && c == 2 && t == 0) (void)emu::smem_pointer(emu::kDynamicSmemOffset + 4000, 128);
    if (kind == 3 && t == 0) {  // CTA 1 publishes its window; CTA 0 converts it
      auto* slot = reinterpret_cast<uint8_t* volatile*>(out + 8);
      if (c == 1) *slot = emu::dynamic_smem(), emu::progress();
      if (c == 0) {
        while (*slot == nullptr) emu::spin("waiting for CTA 1's window");
        (void)emu::smem_address(*slot);
      }
    }
  }, error, error_bytes);
}

// Stack depth: 384-thread CTAs, `ctas` of them, each thread keeping 200 fp32 accumulators live across a warp
// collective per iteration (the attention consumers' shape). out[thread] = the accumulators' sum.
int fc_stack_depth(RunSpec* spec, int ctas, float* out, char* error, int error_bytes) {
  constexpr int kAccumulators = 200;
  return run(spec, {static_cast<unsigned>(ctas)}, {384}, 0, [=] {
    float acc[kAccumulators];
    for (int i = 0; i < kAccumulators; ++i) acc[i] = static_cast<float>(i);
    for (int it = 0; it < 4; ++it) {
      for (int i = 0; i < kAccumulators; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[(i + it) % kAccumulators], 1);
    }
    float s = 0;
    for (float a : acc) s += a;
    out[blockIdx.x * 384 + threadIdx.x] = s;
  }, error, error_bytes);
}

}  // extern "C"

extern "C" {

// The attention kernels' shape on a small scale: 384 threads, warpgroup 0's thread 0 produces tiles of 256 int32
// into a 2-stage ring with asynchronous copies (expect_tx / complete_tx), warpgroups 1-2 (setmaxnreg.inc) each wait
// on the full barrier with all 128 threads, sum their half of the tile (shuffles), meet at named barrier 1, and
// lane 0 of each consumer warp arrives at the empty barrier. out[cta * rounds + round] = the tile's sum.
int fc_pipeline(RunSpec* spec, int ctas, int rounds, const int32_t* src, int32_t* out, char* error,
                int error_bytes) {
  constexpr int kStages = 2, kTile = 256, kConsumerWarps = 8;
  constexpr uint32_t kTileBytes = kTile * sizeof(int32_t);
  return run(spec, {static_cast<unsigned>(ctas)}, {384}, 4096, [=] {
    uint8_t* smem = emu::dynamic_smem();
    auto* full = reinterpret_cast<uint64_t*>(smem);
    auto* empty = full + kStages;
    auto* partial = reinterpret_cast<int32_t*>(smem + 64);  // one per consumer warp
    auto* ring = reinterpret_cast<int32_t*>(smem + 1024);
    const int t = static_cast<int>(threadIdx.x), cta = static_cast<int>(blockIdx.x), wg = t / 128;
    if (t == 0) {
      for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&full[s], 1), ptx::mbarrier_init(&empty[s], kConsumerWarps);
      ptx::fence_mbarrier_init();
    }
    __syncthreads();
    if (wg == 0) {
      ptx::setmaxnreg_dec<40>();
      if (t != 0) return;
      for (int r = 0; r < rounds; ++r) {
        const int s = r % kStages;
        ptx::mbarrier_wait(&empty[s], ((r / kStages) & 1) ^ 1);
        ptx::mbarrier_arrive_expect_tx(&full[s], kTileBytes);
        const int32_t* from = src + (cta * rounds + r) * kTile;
        int32_t* to = ring + s * kTile;
        uint64_t* bar = &full[s];
        for (int half = 0; half < 2; ++half) {  // two copies per tile, like a TMA box per operand
          emu::enqueue_async([=] {
            std::memcpy(to + half * kTile / 2, from + half * kTile / 2, kTileBytes / 2);
            emu::mbarrier_complete_tx(bar, kTileBytes / 2);
          });
        }
      }
      return;
    }
    ptx::setmaxnreg_inc<232>();
    const int c = t - 128, warp = c / 32;
    for (int r = 0; r < rounds; ++r) {
      const int s = r % kStages;
      ptx::mbarrier_wait(&full[s], (r / kStages) & 1);
      int32_t v = ring[s * kTile + c];
      for (int k = 16; k > 0; k /= 2) v += __shfl_xor_sync(0xffffffffu, v, k);
      if (c % 32 == 0) partial[warp] = v, ptx::mbarrier_arrive(&empty[s]);
      ptx::named_barrier_sync(1, 256);
      if (c == 0) {
        int32_t sum = 0;
        for (int w = 0; w < kConsumerWarps; ++w) sum += partial[w];
        out[cta * rounds + r] = sum;
      }
      ptx::named_barrier_sync(2, 256);  // partial[] is reused next round
    }
  }, error, error_bytes);
}

// A grid larger than what is resident runs in waves. Per CTA c (thread 0 reports): out[4c] = the first word of its
// dynamic shared memory before it writes it (0xffffffff: fresh), out[4c + 1] = its per-CTA state before it counts
// (0: fresh), out[4c + 2] = CTAs running when it started (counted in running[0], the most ever in running[1]).
// chain = 1: CTA c first waits for CTA c + 1's flag (flags[c + 1]), a dependency on a later CTA that only holds
// when every CTA is resident at once.
int fc_waves(RunSpec* spec, int ctas, int threads, int chain, int32_t* running, int32_t* flags, uint32_t* out,
             char* error, int error_bytes) {
  static const char kCountKey = 0;  // the per-CTA state's key
  return run(spec, {static_cast<unsigned>(ctas)}, {static_cast<unsigned>(threads)}, 64, [=] {
    const int c = static_cast<int>(blockIdx.x);
    auto* word = reinterpret_cast<uint32_t*>(emu::dynamic_smem());
    if (threadIdx.x == 0) {
      out[4 * c] = *word;
      *word = 1000 + c;
      out[4 * c + 1] = emu::cta_state<int>(&kCountKey)++;
      out[4 * c + 2] = static_cast<uint32_t>(atomicAdd(running, 1) + 1);
      atomicMax(running + 1, running[0]);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (chain && c + 1 < ctas) {
        while (ptx::ld_acquire_gpu(flags + c + 1) == 0) {
        }
      }
      out[4 * c + 3] = *word;
      ptx::red_release_gpu_add(flags + c, 1);
      atomicAdd(running, -1);
    }
  }, error, error_bytes);
}

}  // extern "C"
