// The CPU model of csrc/cuda/ptx/sync_ext.cuh (included there under FLASHCORE_SM90_EMU): gpu-scope acquire / release
// on global int32 semaphores and fp32 pair reductions. One OS thread runs every fiber, so the atomics are for form
// (std::atomic_ref costs nothing here); what matters to the model is where the scheduler may switch fibers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "emu.h"
#include "ptx_proxy.h"  // the acquire / fence.proxy.async.global rule for TMA accesses to global memory

namespace flashcore::cuda_emu {
constexpr size_t kPollWhatBytes = 96;  // a poll's description: one line of the deadlock report
}  // namespace flashcore::cuda_emu

namespace flashcore::sm90::ptx {

// A poll: kernels spin on it bare (`while (ld_acquire_gpu(p) != v) {}`), so every call is a scheduling point,
// named for the deadlock report.
inline int32_t ld_acquire_gpu(const int32_t* ptr) {
  std::atomic_ref<int32_t> word(*const_cast<int32_t*>(ptr));  // only loaded
  char what[cuda_emu::kPollWhatBytes];
  std::snprintf(what, sizeof what, "ld.acquire.gpu polling the int32 at %p (last read %d)",
                static_cast<const void*>(ptr), word.load(std::memory_order_relaxed));
  cuda_emu::spin(what);
  cuda_emu::proxy_global_acquire();
  return word.load(std::memory_order_acquire);
}

// The model keeps one view of global memory for both proxies (TMA writes land in it at their write step): the fence
// clears this thread's acquire mark (ptx_proxy.h), the rule it is checked against.
inline void fence_proxy_async_global() {
  cuda_emu::proxy_global_fence();
  cuda_emu::progress();
}

inline void red_release_gpu_add(int32_t* ptr, int32_t v) {
  std::atomic_ref<int32_t>(*ptr).fetch_add(v, std::memory_order_release);
  cuda_emu::progress();  // a poller may proceed
}

inline void red_add_f32x2(float* ptr, float lo, float hi) {
  if (reinterpret_cast<uintptr_t>(ptr) % 8 != 0) {
    cuda_emu::fail("red.global.add.v2.f32 at " + std::to_string(reinterpret_cast<uintptr_t>(ptr)) +
                   ": the address must be 8-byte aligned");
  }
  std::atomic_ref<float>(ptr[0]).fetch_add(lo, std::memory_order_relaxed);
  std::atomic_ref<float>(ptr[1]).fetch_add(hi, std::memory_order_relaxed);
  cuda_emu::progress();
}

}  // namespace flashcore::sm90::ptx
