// Synchronization for warp-specialized sm_90a kernels: mbarriers (the handshake between TMA producers and wgmma
// consumers), the fences that order the generic and async proxies, named barriers between warpgroups, and
// setmaxnreg (moving registers from producer to consumer warpgroups).
//
// PTX ISA references (section titles):
//   "Parallel Synchronization and Communication Instructions: mbarrier" (init, arrive, expect_tx, try_wait)
//   "membar / fence" (fence.proxy.async, fence.mbarrier_init)
//   "bar, barrier" (named barriers)
//   "setmaxnreg"
//
// An mbarrier is a 64-bit word in shared memory that counts, per phase, (a) pending arrivals, set by init, and
// (b) pending transaction bytes, raised by expect_tx and lowered by the copy engine (complete_tx) as TMA data lands.
// A phase completes when both reach zero; the barrier then starts the next phase with the arrival count reset.
// Waiters name the phase they wait for by its parity (0, 1, 0, ...), so a ring of barriers needs only one
// phase bit per lap.
#pragma once

#include <cstdint>

#include "smem.cuh"
#include "watchdog.cuh"

namespace flashcore::sm90::ptx {
constexpr uint32_t kMinRegsPerThread = 24;   // setmaxnreg's range is [24, 256] ...
constexpr uint32_t kMaxRegsPerThread = 256;
constexpr uint32_t kRegAllocGranule = 8;      // ... in multiples of 8
}  // namespace flashcore::sm90::ptx

#if defined(FLASHCORE_SM90_EMU)
#include "../../cuda_emu/ptx_mbarrier.h"  // the CPU model of the functions below: same names and signatures
#else
namespace flashcore::sm90::ptx {

// mbarrier.init: phase 0, `arrivals` pending arrivals, 0 transaction bytes. One thread initializes; the barrier
// must not be used before fence_mbarrier_init() and a CTA-wide barrier (__syncthreads) publish it.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals) : "memory");
}

// Makes preceding mbarrier.init visible to the async proxy (the TMA unit signals complete_tx on these barriers)
// and to other CTAs of the cluster. Only .release.cluster exists for this fence.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival (release semantics at CTA scope: this thread's earlier memory accesses, e.g. its reads of a ring
// stage, happen before a waiter that observes the phase flip). The returned state token is not needed: the sink
// form `_` is only defined for .shared::cluster, so a scratch register takes it.
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile(
      "{\n"
      "  .reg .b64 state;\n"
      "  mbarrier.arrive.shared::cta.b64 state, [%0];\n"
      "}\n" ::"r"(smem_u32(bar))
      : "memory");
}

// One arrival that also raises the phase's pending transaction count by `bytes`: the producer announces how many
// bytes the TMA loads it is about to issue will deliver to this barrier. The phase cannot complete before they land.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile(
      "{\n"
      "  .reg .b64 state;\n"
      "  mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(bytes)
      : "memory");
}

// True once the phase with parity `parity` has completed. try_wait (unlike test_wait) may suspend the thread for
// a hardware-chosen time before returning false, so a spin on it does not hammer the barrier. A barrier that was
// just initialized is in phase 0: try_wait(1) succeeds at once (the "previous" phase counts as complete), which
// is what lets a producer pass the empty barriers of a fresh ring.
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "  selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}

// Blocks until the phase with parity `parity` has completed (acquire: the data it guards is visible afterwards).
// With -DFLASHCORE_SM90_WATCHDOG a wait past kWatchdogNs reports the barrier and traps (watchdog.cuh).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if defined(FLASHCORE_SM90_WATCHDOG)
  Watchdog watchdog;
  while (!mbarrier_try_wait(bar, parity)) {
    if (watchdog.expired()) watchdog_trap_mbarrier(smem_u32(bar), parity);
  }
#else
  while (!mbarrier_try_wait(bar, parity)) {
  }
#endif
}

// fence.proxy.async.shared::cta: orders this thread's generic-proxy shared-memory accesses (st.shared, stmatrix)
// with later async-proxy accesses (TMA store reading the tile, wgmma reading an operand). Each writing thread
// fences, then the threads synchronize, then one thread issues the async operation.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---------------------------------------------------------------------------------------------------------------
// Named barriers: 16 per CTA; id 0 is __syncthreads. `threads` counts participating threads (a multiple of 32).
// bar.sync waits for `threads` arrivals; bar.arrive adds this warp's arrival without waiting (a producer-only
// side of an ordering, e.g. "warpgroup 1 may start its softmax now").
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---------------------------------------------------------------------------------------------------------------
// setmaxnreg: a warpgroup releases (dec) or claims (inc) registers from the CTA's pool, which holds
// registers-at-launch x threads. All 128 threads of the warpgroup execute it (.sync.aligned). ptxas honours it only
// when the kernel has a register cap at entry (__launch_bounds__(threads, 1) or -maxrregcount) and each role is one
// branch of an if/else; otherwise it warns (C7508) and drops it. SASS: USETMAXREG. inc blocks until the pool has
// the registers, so the budget must balance: sum over warpgroups of 128 x count <= pool.

template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs >= kMinRegsPerThread && kRegs <= kMaxRegsPerThread && kRegs % kRegAllocGranule == 0,
                "setmaxnreg takes a multiple of 8 in [24, 256]");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs >= kMinRegsPerThread && kRegs <= kMaxRegsPerThread && kRegs % kRegAllocGranule == 0,
                "setmaxnreg takes a multiple of 8 in [24, 256]");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU
