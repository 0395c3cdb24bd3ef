// Fibers for the CPU models of GPU grids (csrc/hip_emu: gfx942 work-items, csrc/cuda_emu: sm_90a threads): a
// stack and a saved register context per simulated thread, switched cooperatively on one OS thread.
//
// - Stacks are mmap'd with MAP_NORESERVE and a PROT_NONE guard page below them: untouched pages cost no memory
//   (a kernel thread's frame is tens of KiB, the reservation can be generous) and an overflow faults at once
//   instead of corrupting the neighbouring fiber.
// - x86-64 switches with a dozen instructions (callee-saved registers + SSE/x87 control words); elsewhere with
//   ucontext, whose swapcontext also saves the signal mask (a system call per switch: slower, same behaviour).
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace flashcore::emu_common {

class FiberStack {
 public:
  FiberStack() = default;
  explicit FiberStack(size_t bytes);  // usable bytes, rounded up to whole pages; aborts if the mapping fails
  FiberStack(FiberStack&& other) noexcept;
  FiberStack& operator=(FiberStack&& other) noexcept;
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  ~FiberStack();

  void* base() const { return usable_; }  // lowest usable byte; the stack grows down from base() + size()
  size_t size() const { return usable_bytes_; }
  size_t resident_bytes() const;  // pages of the stack ever touched (mincore): how deep the fiber's frames went

 private:
  void* mapping_ = nullptr;  // guard page + usable pages
  size_t mapping_bytes_ = 0;
  void* usable_ = nullptr;
  size_t usable_bytes_ = 0;
};

struct FiberContext {
#if defined(__x86_64__)
  void* sp = nullptr;  // saved stack pointer; the registers sit on the stack below it
#else
  ucontext_t context;
#endif
};

// Sets `fiber` up to run `entry` on `stack` when first switched to. `entry` must never return (it ends by
// switching away for good): there is no frame to return to.
void fiber_prepare(FiberContext& fiber, FiberStack& stack, void (*entry)());

// Saves the running context in `from` and continues `to` where it last switched away (or at its entry).
void fiber_switch(FiberContext& from, FiberContext& to);

}  // namespace flashcore::emu_common
