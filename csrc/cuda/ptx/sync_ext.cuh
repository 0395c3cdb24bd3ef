// Synchronization the attention backward adds to the PTX layer (kept out of mbarrier.cuh so the forward can extend
// that one freely): gpu-scope acquire / release on a global int32 (the deterministic mode's per-tile semaphores),
// the proxy fence between such an acquire and a TMA reduce-add, and fp32 pair accumulation into global memory.
//
// PTX ISA references (section titles): "ld" (.acquire), "red" (.release, .v2.f32), "membar / fence"
// (fence.proxy.async).
#pragma once

#include <cstdint>

#if defined(FLASHCORE_SM90_EMU)
#include "../../cuda_emu/ptx_sync_ext.h"  // the CPU model of the functions below: same names and signatures
#else
namespace flashcore::sm90::ptx {

// Load with acquire semantics at gpu scope: later reads of this thread see what the releasing CTA wrote before
// its release. Spun on by one thread; a CTA barrier then extends the ordering to the others.
__device__ __forceinline__ int32_t ld_acquire_gpu(const int32_t* ptr) {
  int32_t v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}

// fence.proxy.async.global: orders this thread's earlier generic-proxy view of global memory (e.g. what an
// ld.acquire made visible) before its later async-proxy accesses (a TMA reduce-add onto the same addresses).
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// Adds `v` with release semantics at gpu scope (the writes that happen-before it, across a CTA barrier and the
// writers' fences, are visible to whoever acquires the new value).
__device__ __forceinline__ void red_release_gpu_add(int32_t* ptr, int32_t v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(ptr), "r"(v) : "memory");
}

// *ptr += (lo, hi) atomically, two adjacent fp32 values in one instruction (8-byte aligned). sm_90 has the vector
// form: half the instructions of two scalar reductions for the same bytes.
__device__ __forceinline__ void red_add_f32x2(float* ptr, float lo, float hi) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(ptr), "f"(lo), "f"(hi) : "memory");
}

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU
