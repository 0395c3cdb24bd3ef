// Global atomics of the gfx942 backward: fp32 accumulation of dQ across workgroups, and the per-tile semaphores
// that put that accumulation in a fixed order when the caller asks for deterministic results.
//
// The dQ adds are relaxed, device ("agent") scope: global_atomic_add_f32 is performed in L2, so adds from
// different workgroups never race, but their order (and so the fp32 rounding) follows the schedule. The ordered
// mode wraps each workgroup's adds to one dQ tile in a ticket lock: lane 0 waits until the tile's counter equals
// the workgroup's rank among the K/V blocks that touch the tile, the block adds, then releases (counter + 1).
// Ranks only ever wait on lower-numbered K/V blocks, which are dispatched earlier, so the wait always ends.
#pragma once

#include "compat.h"

#if defined(FLASHCORE_HIP_EMU)
#include <atomic>
#endif

namespace flashcore::gfx942 {

FLASHCORE_DEVICE void atomic_add_f32(float* p, float v) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 4, true);
  std::atomic_ref<float>(*p).fetch_add(v, std::memory_order_relaxed);
#else
  __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);  // global_atomic_add_f32, no return
#endif
}

// Spins (one lane) until *counter == value; acquire, device scope.
FLASHCORE_DEVICE void wait_counter(const int32_t* counter, int32_t value) {
#if defined(FLASHCORE_HIP_EMU)
  emu::wait_counter(counter, value);
#else
  while (__hip_atomic_load(counter, __ATOMIC_ACQUIRE, __HIP_MEMORY_SCOPE_AGENT) != value) {
    __builtin_amdgcn_s_sleep(2);  // ~128 cycles between polls: leave the L2 to the blocks being waited for
  }
#endif
}

// *counter = value (one lane); release, device scope.
FLASHCORE_DEVICE void release_counter(int32_t* counter, int32_t value) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(counter, 4, true);
  std::atomic_ref<int32_t>(*counter).store(value, std::memory_order_release);
#else
  __hip_atomic_store(counter, value, __ATOMIC_RELEASE, __HIP_MEMORY_SCOPE_AGENT);
#endif
}

// s_barrier that also orders global memory at device scope: every lane's earlier global accesses (the dQ adds) are
// complete before any lane passes, and later ones start after. Used only around the ordered dQ accumulation.
FLASHCORE_DEVICE void block_barrier_global() {
#if defined(FLASHCORE_HIP_EMU)
  emu::block_barrier();  // a block's fibers share one OS thread: program order is the memory order
#else
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "agent");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "agent");
#endif
}

}  // namespace flashcore::gfx942
