// Opt-in hang watchdog for the kernels' spin loops, for a first run on hardware: built with
// -DFLASHCORE_SM90_WATCHDOG, a wait on an mbarrier phase (mbarrier_wait) or on a global flag (the deterministic
// backward's dQ turn) that has not completed after kWatchdogNs prints who waited on what and traps, so a deadlock
// becomes a launch failure that names the barrier instead of a GPU that never answers. Without the switch this
// header is empty and the loops compile exactly as before (scripts/gpu_check.sh's header: how to rebuild with it).
//
// The clock is %globaltimer (ns, PTX ISA "Special Registers: %globaltimer"), read only after a first failed try,
// so a wait that succeeds at once runs the same instructions as without the switch.
//
// The cost is elsewhere: the report is a call (printf is vprintf), and a kernel with a call keeps the ABI's minimum
// registers, so ptxas drops every setmaxnreg (C7507, all of them, in every kernel: no warpgroup waits on registers
// another never gives back). Each warpgroup keeps the launch's registers and the consumers spill (stack 40-624
// bytes): the same barrier protocol, slower. A build to name a deadlock, not to time or to check resources.json.
#pragma once

#if defined(FLASHCORE_SM90_WATCHDOG) && !defined(FLASHCORE_SM90_EMU)
#include <cstdint>
#include <cstdio>

namespace flashcore::sm90::ptx {

// 10 s: the longest legitimate wait (a stage's TMA loads, the previous block's dQ adds) is microseconds, and the
// runner's per-test timeout (scripts/gpu_tests.py, 30 s) must not fire first.
constexpr uint64_t kWatchdogNs = 10ull * 1000 * 1000 * 1000;

__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// The clock of one wait, started by the first failed try.
struct Watchdog {
  uint64_t start = 0;
  __device__ __forceinline__ bool expired() {
    const uint64_t now = globaltimer_ns();
    if (start == 0) start = now;
    return now - start > kWatchdogNs;
  }
};

// Out of line: the report's printf stays out of the loops' register allocation.
static __device__ __noinline__ void watchdog_trap_mbarrier(uint32_t bar_smem, uint32_t parity) {
  printf("flashcore watchdog: block (%u,%u,%u) thread (%u,%u,%u) waited > %llu s on the mbarrier at shared 0x%x "
         "for parity %u\n",
         blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, kWatchdogNs / 1000000000ull,
         bar_smem, parity);
  __trap();
}

static __device__ __noinline__ void watchdog_trap_flag(const int32_t* flag, int32_t value, int32_t target) {
  printf("flashcore watchdog: block (%u,%u,%u) thread (%u,%u,%u) waited > %llu s on the int32 at %p: it reads %d, "
         "waiting for >= %d\n",
         blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, kWatchdogNs / 1000000000ull,
         flag, value, target);
  __trap();
}

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_WATCHDOG && !FLASHCORE_SM90_EMU
