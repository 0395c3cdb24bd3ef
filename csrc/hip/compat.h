// What the gfx942 kernels need from a runtime, in the three ways flashcore compiles them:
//
//   HIP build (setup.py, hipcc)             hip_runtime.h is there; device code uses the clang builtins below.
//   FLASHCORE_HIP_NO_RUNTIME (ISA checks)   clang++-19 --cuda-device-only -nogpulib -nogpuinc: no HIP headers at
//                                           all, so the attributes hip_runtime.h would define are spelled here.
//   FLASHCORE_HIP_EMU (CPU harness)         g++ compiles the same kernel source for the host; every work-item is a
//                                           fiber of csrc/hip_emu/emu.h, and ids, barriers and wave collectives
//                                           are that harness's functions.
//
// Kernels use only the names defined here (thread_id, block_id_x, block_barrier, readfirstlane, ...), never
// threadIdx / __syncthreads directly, so one source serves all three.
#pragma once

#include <cstdint>

#if defined(FLASHCORE_HIP_EMU)
#include "../hip_emu/emu.h"

#define FLASHCORE_GLOBAL
#define FLASHCORE_DEVICE inline
#define FLASHCORE_LAUNCH_BOUNDS(threads, waves_per_eu)
// Block-shared memory: the harness hands every block its own 64 KiB, poisoned (0xff bytes = bf16/fp16 NaN) so a
// read of anything not written this block shows up in the results.
#define FLASHCORE_LDS(name, bytes) uint8_t* const name = ::flashcore::emu::lds(bytes)

#else  // device code for gfx942

#if defined(FLASHCORE_HIP_NO_RUNTIME)
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __forceinline__ __inline__ __attribute__((always_inline))
#else
#include <hip/hip_runtime.h>
#endif

#define FLASHCORE_GLOBAL __global__
#define FLASHCORE_DEVICE __device__ __forceinline__
// flat_work_group_size: the exact block size, so the compiler neither assumes 1024 threads nor spills for them;
// waves_per_eu: the occupancy the register allocator must keep (it caps VGPR+AGPR at 512 / waves, rounded to 8).
#define FLASHCORE_LAUNCH_BOUNDS(threads, waves_per_eu) \
  __attribute__((amdgpu_flat_work_group_size(threads, threads), amdgpu_waves_per_eu(waves_per_eu)))
#define FLASHCORE_LDS(name, bytes) __shared__ __attribute__((aligned(16))) uint8_t name[bytes]

#endif

namespace flashcore::gfx942 {

constexpr int kWaveSize = 64;  // CDNA3 wavefront: 64 lanes

#if defined(FLASHCORE_HIP_EMU)

inline int thread_id() { return emu::thread_id(); }
inline int block_id_x() { return emu::block_id(0); }
inline int block_id_y() { return emu::block_id(1); }
inline int block_id_z() { return emu::block_id(2); }
inline void block_barrier() { emu::block_barrier(); }
inline int readfirstlane(int v) { return emu::readfirstlane(v); }
inline void schedule_fence() {}
template <class T>
inline T opaque(T v) { return v; }
template <class Args>
inline const Args& reread_args(const Args& args) { return args; }

#else

FLASHCORE_DEVICE int thread_id() { return static_cast<int>(__builtin_amdgcn_workitem_id_x()); }
FLASHCORE_DEVICE int block_id_x() { return static_cast<int>(__builtin_amdgcn_workgroup_id_x()); }
FLASHCORE_DEVICE int block_id_y() { return static_cast<int>(__builtin_amdgcn_workgroup_id_y()); }
FLASHCORE_DEVICE int block_id_z() { return static_cast<int>(__builtin_amdgcn_workgroup_id_z()); }

// __syncthreads for LDS traffic only. HIP's __syncthreads fences every address space at workgroup scope; here
// the release fence covers LDS alone, so it waits for this wave's LDS writes (s_waitcnt lgkmcnt(0)) but leaves
// the global loads of the next tile in flight across the barrier (no vmcnt(0)) -- that is the register prefetch.
// The fences also keep the compiler from moving LDS accesses across s_barrier, which by itself touches no memory.
FLASHCORE_DEVICE void block_barrier() {
#if __clang_major__ >= 19
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup", "local");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup", "local");
#else  // no address-space fences before clang 19: fence everything, as __syncthreads does
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
#endif
}

// No instruction moves across this point in the compiler's scheduling (it emits no code): for the places where
// hoisting loads early would push the live registers past the budget.
FLASHCORE_DEVICE void schedule_fence() { __builtin_amdgcn_sched_barrier(0); }

// A wave-uniform value (a pointer or integer in SGPRs) the compiler cannot see through: what is computed from it
// is computed where it is used. Loop-invariant code motion would otherwise hoist that work out of the loop and
// keep its results live across every iteration, and values read from the kernel arguments would stay in SGPRs
// from the first use to the last instead of being read again.
template <class T>
FLASHCORE_DEVICE T opaque(T v) {
  __asm__ volatile("" : "+s"(v));
  return v;
}

// The kernel's by-value argument struct, read again from the kernarg segment where it is used: `args` must be
// the kernel's only argument (kernarg offset 0). Clang copies a by-value kernel argument on entry, so every field
// the kernel reads anywhere is loaded there and held in SGPRs up to its last use (the register allocator does not
// reload them); fields read through this reference are s_loads (scalar cache hits) at the point of use instead.
template <class Args>
FLASHCORE_DEVICE const Args& reread_args(const Args&) {
  using Kernarg = const __attribute__((address_space(4))) Args*;  // constant address space: s_load
  const Kernarg kernarg = opaque((Kernarg)__builtin_amdgcn_kernarg_segment_ptr());
  return *(const Args*)kernarg;
}

// Lane 0's value in every lane: makes a value the compiler cannot prove wave-uniform live in an SGPR.
FLASHCORE_DEVICE int readfirstlane(int v) { return __builtin_amdgcn_readfirstlane(v); }

#endif

// The (tile, head) this block runs in a grid of x = tiles, y = heads, tile slowest. The hardware dispatches the
// blocks of a grid in increasing x + tiles * y, so with this mapping every head's tile 0 starts before any head's
// tile 1: the kernels number tiles longest first (causal), and the short ones fill the tail of the schedule instead
// of one head's long tiles starting last (flashcore/_advise_model.py models this order). 64-bit: tiles * heads
// can pass 2^31 on absurd shapes, and the division runs once per block.
struct TileHead {
  int tile, head;
};
FLASHCORE_DEVICE TileHead tile_slowest(int tiles, int heads) {
  const uint64_t linear = static_cast<uint64_t>(block_id_x()) + static_cast<uint64_t>(tiles) * block_id_y();
  return {static_cast<int>(linear / static_cast<uint64_t>(heads)),
          static_cast<int>(linear % static_cast<uint64_t>(heads))};
}

}  // namespace flashcore::gfx942
