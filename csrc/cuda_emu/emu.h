// A thread-accurate CPU model of how an sm_90a grid runs: enough to execute flashcore's Hopper kernels
// (csrc/cuda/) unchanged on a machine without a GPU, with TMA, wgmma and mbarriers modelled from the PTX ISA.
//
// - Every CUDA thread of every resident CTA is a fiber; all of them run on the one OS thread that called launch(),
//   so the model needs no locks and a seed fixes the interleaving. A grid larger than the resident CTAs runs in
//   waves, as on the hardware: a CTA starts when one exits. A fiber runs alone, in program order,
//   until it reaches a synchronisation point (a warp or warpgroup collective, a barrier, an mbarrier wait, a spin
//   iteration); then the engine picks the next fiber (seeded random choice among the runnable ones, round robin,
//   random warp priorities, or greedily the lowest / highest warp: Schedule).
// - Asynchronous work (TMA loads and stores, which the hardware's copy engine does in the background) is queued and
//   runs later, at a scheduling point chosen by the engine, never inside the issuing instruction: a kernel that
//   reads a TMA destination before its mbarrier says the bytes landed reads stale data (shared memory starts
//   filled with 0xff: NaN in bf16/fp16/fp32), and the tests see it.
// - Collectives (shuffles, wgmma, stmatrix, setmaxnreg, bar.sync) are rendezvous of the threads of one warp
//   (32) or warpgroup (128): each deposits its operands, the last to arrive computes the instruction for all of them
//   from the ISA's lane layouts, then all continue. Threads of one group arriving at different collectives
//   (divergence the hardware does not allow for .aligned instructions) stop the launch with an error naming both.
// - Deadlock (no fiber runnable, no asynchronous work pending, no spinning fiber that saw a change for a whole
//   round) stops the launch with an error listing what every live warp waits on.
//
// Layers: this header is the engine's interface (engine.cpp: scheduler, launch, queue, per-CTA state; engine_sync.cpp:
// rendezvous, barriers, spins; both on csrc/emu_common's fibers and watchdog, shared with the gfx942 model);
// prelude.h maps the CUDA language (threadIdx, __syncthreads, __shfl_sync, atomicAdd, ...) onto it for a host
// compiler; the ptx_*.h headers model the instructions behind csrc/cuda/ptx/*.cuh (included there under
// FLASHCORE_SM90_EMU); harness_*.cpp are the C entry points tests/test_cuda_sm90_emulated.py (the kernels) and
// tests/test_cuda_emu_engine.py (the engine itself) load with ctypes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace flashcore::cuda_emu {

constexpr int kWarpSize = 32;
constexpr int kWarpgroupSize = 128;           // 4 warps: the unit of wgmma and setmaxnreg
constexpr int kNamedBarriers = 16;            // bar.sync ids 0..15; 0 is __syncthreads
constexpr size_t kSmemWindowBytes = 228 * 1024;   // shared memory per SM on H100 (one CTA may own all of it)
constexpr size_t kMaxDynamicSmemBytes = 227 * 1024;  // cudaFuncAttributeMaxDynamicSharedMemorySize limit
// Where dynamic shared memory starts in the CTA's shared window. The hardware reserves the first 1 KiB of the
// window on sm_90 (cudaDevAttrReservedSharedMemoryPerBlock); kernels must not assume the window starts aligned.
constexpr uint32_t kDynamicSmemOffset = 1024;

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// ---- inside a kernel (called from the current fiber) ------------------------------------------------------------
Dim3 thread_idx();
Dim3 block_idx();
Dim3 grid_dim();
Dim3 block_dim();
int linear_thread();     // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
int linear_block();      // the CTA's index in launch order (its key for per-CTA state in the ptx models)

uint8_t* dynamic_smem();                       // this CTA's dynamic shared memory (window offset kDynamicSmemOffset)
uint32_t smem_address(const void* generic);    // generic -> shared-window address; fails if not this CTA's smem
uint8_t* smem_pointer(uint32_t address, size_t bytes);  // window address -> pointer; fails past the window/launch size

[[noreturn]] void fail(const std::string& message);  // stop the launch; launch() returns the message (with the
                                                     // failing thread's CTA, warp and lane prepended)

// A scheduling point with nothing to wait for: the body of every spin loop (mbarrier try_wait returning false,
// a polled global semaphore). `what` names the wait for the deadlock report. Returns after other fibers and
// pending asynchronous work had a chance to run.
void spin(const char* what);
// Something other threads may be waiting for happened (an arrival, a release, an atomic): resets the deadlock
// detector's count of fruitless spin rounds. The engine's own barriers and the async queue call it themselves.
void progress();

// The rendezvous behind every collective. Group = `group_size` consecutive linear threads (32: a warp, 128: a
// warpgroup) containing the caller. `compute(ctx, ins, outs)` runs once, in the last member to arrive, with ins[i]
// / outs[i] the operands / result of member i (member order = lane order). `name` must match across the group.
using Compute = void (*)(const void* ctx, const void* const* ins, void* const* outs);
void group_sync(int group_size, const char* name, const void* in, void* out, Compute compute, const void* ctx);

template <class In, class Out, class Fn>
Out group_collective(int group_size, const char* name, const In& in, const Fn& fn) {  // fn(const In* const*, Out* const*)
  Out out{};
  group_sync(
      group_size, name, &in, &out,
      [](const void* ctx, const void* const* ins, void* const* outs) {
        (*static_cast<const Fn*>(ctx))(reinterpret_cast<const In* const*>(ins), reinterpret_cast<Out* const*>(outs));
      },
      &fn);
  return out;
}

// bar.sync / bar.arrive: barrier `id` of this CTA completes when `threads` threads (a multiple of 32; 0 = the whole
// CTA) have arrived, counted per warp as the hardware does; sync waits for completion, arrive does not.
void named_barrier_sync(int id, int threads);
void named_barrier_arrive(int id, int threads);

// Asynchronous work (the copy engine). `work` runs on this OS thread at a later scheduling point, with no fiber
// current; it may call mbarrier models (complete_tx) and read/write shared and global memory. Returns a ticket;
// run_async_now(ticket) runs it at once if it has not run yet (cp.async.bulk.wait_group needs its stores done).
uint64_t enqueue_async(std::function<void()> work);
void run_async_now(uint64_t ticket);
bool async_done(uint64_t ticket);

// Per-CTA state for the instruction models (mbarriers, wgmma groups, bulk groups): `key` identifies the kind
// (the address of a static in the model's header); the object is created on first use and destroyed when the
// launch ends. One per CTA and key.
template <class T>
T& cta_state(const void* key);
void* cta_state_raw(const void* key, void* (*make)(), void (*destroy)(void*));

template <class T>
T& cta_state(const void* key) {
  return *static_cast<T*>(cta_state_raw(
      key, []() -> void* { return new T(); }, [](void* p) { delete static_cast<T*>(p); }));
}

// ---- without a current fiber (asynchronous work, the mbarrier model's complete_tx) ----------------------------
// Asynchronous work runs on behalf of the CTA whose thread enqueued it: inside it linear_block(), dynamic_smem(),
// smem_address(), smem_pointer(), cta_state() and enqueue_async() refer to that CTA; thread_idx() and the
// collectives fail. The calls below need no current fiber at all. (Added by the engine; the mbarrier model's
// flashcore::cuda_emu::mbarrier_complete_tx(bar, bytes), for the TMA model, is in ptx_mbarrier.h.)
int smem_owner(const void* generic);  // the CTA whose shared window holds `generic`, or -1
void* cta_state_raw_of(int cta, const void* key, void* (*make)(), void (*destroy)(void*));
template <class T>
T& cta_state_of(int cta, const void* key) {  // cta_state of CTA `cta` (its linear_block())
  return *static_cast<T*>(cta_state_raw_of(
      cta, key, []() -> void* { return new T(); }, [](void* p) { delete static_cast<T*>(p); }));
}
int registers_per_thread();  // LaunchOptions::registers_per_thread of the running launch (0: unknown)

// ---- launching (host side of the harness) -----------------------------------------------------------------------
enum class Schedule : int {
  kRandom = 0,      // seeded random choice among runnable fibers at every scheduling point (the default)
  kRoundRobin = 1,  // every fiber one step per round: warps advance nearly in lock step
  // Added by the engine: seeded random warp priorities (as in PCT, Burckhardt et al. 2010): a runnable lane of the
  // highest warp runs, a spin drops the spinner's warp below every warp that is not spinning, and now and then one
  // warp's priority is redrawn. Warps run far ahead of each other: a producer laps a slow consumer, one warp
  // finishes its loop before another starts (races that the near lock step of uniform choice rarely shows).
  kRandomPriority = 2,
  // Greedy, deterministic (the fiber order does not depend on the seed; only asynchronous delays do): the lowest-
  // numbered warp of the grid (CTA-major) with a runnable lane that is not spinning always runs, its lowest such
  // lane first; a warp keeps running until every lane waits. Spinning lanes run only when no warp has other work,
  // then in round robin, so a spinning consumer cannot starve its producer. One warp runs as far ahead of the next as
  // the kernel's synchronisation allows: a missing barrier between warps shows on every run.
  kLowestFirst = 3,
  kHighestFirst = 4,  // the same from the highest-numbered warp (and lane) down
};

struct LaunchOptions {
  Schedule schedule = Schedule::kRandom;
  uint64_t seed = 1;
  // Asynchronous work runs after a random number of scheduling points in [1, max_async_delay] (seeded), or at
  // once when nothing else can run (then a random pending operation, not the earliest). Larger delays expose
  // reads that do not wait for their data; a huge one (1 << 30) makes the copy engine lazy: work runs only when
  // every thread waits (or run_async_now asks for it), the setting that shows a missing wait best.
  int max_async_delay = 64;
  // Wall-clock limit for the whole launch. A fiber that never reaches a scheduling point (an endless loop with no
  // collective, barrier or spin) cannot be stopped by the engine: a watchdog aborts the process after this long
  // without one, naming the running thread on stderr.
  double timeout_seconds = 120.0;
  // Registers per thread at kernel entry (what ptxas gave the kernel, e.g. 168 for __launch_bounds__(384, 1)):
  // setmaxnreg checks that the CTA's pool (this x block threads) covers every warpgroup's request. 0 = unknown:
  // the pool check is skipped (the warpgroup rendezvous and the range checks stay).
  int registers_per_thread = 0;
  // CTAs resident at once (an SM's worth each, as on the hardware): a grid with more runs in waves, the next CTA
  // (in linear order) starting, with fresh shared memory and per-CTA state, in the slot of one whose threads all
  // exited. 0 = as many as fit in the model's 24 K resident threads (kMaxFibers in engine.cpp); more is refused.
  int max_resident_ctas = 0;
};

struct LaunchStats {
  uint64_t ctas = 0, fiber_switches = 0, collectives = 0, barriers = 0, async_ops = 0;
  uint64_t max_stack_bytes = 0;  // deepest fiber stack of the launch (resident pages): headroom for the reservation
};

// Runs `kernel` (the kernel body, called once per thread) over `grid` CTAs of `block` threads with
// `dynamic_smem_bytes` of dynamic shared memory, at most LaunchOptions::max_resident_ctas CTAs resident at once
// (the persistent kernels' grids fit: the harness picks a grid the size of the machine it pretends to be; the
// others run in waves). A resident CTA waiting for one that has not started is reported as a deadlock, as it is on
// the hardware. Asynchronous work a CTA leaves pending when its threads exit is dropped. Returns "" on success,
// else the first error. Fails up front when block has more than 1024 threads or dynamic_smem_bytes exceeds
// kMaxDynamicSmemBytes.
std::string launch(Dim3 grid, Dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& kernel,
                   const LaunchOptions& options = {}, LaunchStats* stats = nullptr);

// For the harness's C entry points: 0 when `message` is empty, else -1 with the message copied into `error`.
int to_c_status(const std::string& message, char* error, int error_bytes);

}  // namespace flashcore::cuda_emu
