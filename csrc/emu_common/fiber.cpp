// Fiber stacks and context switches shared by the gfx942 and sm_90a CPU models (see fiber.h).
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace flashcore::emu_common {

namespace {
size_t page_bytes() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return bytes;
}
}  // namespace

FiberStack::FiberStack(size_t bytes) {
  const size_t page = page_bytes();
  usable_bytes_ = (bytes + page - 1) / page * page;
  mapping_bytes_ = usable_bytes_ + page;  // one guard page below the stack
  mapping_ = mmap(nullptr, mapping_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping_ == MAP_FAILED || mprotect(mapping_, page, PROT_NONE) != 0) {
    std::fprintf(stderr, "flashcore emu: cannot map a %zu-byte fiber stack: %s\n", mapping_bytes_,
                 std::strerror(errno));
    std::abort();
  }
  usable_ = static_cast<uint8_t*>(mapping_) + page;
}

FiberStack::FiberStack(FiberStack&& other) noexcept { *this = std::move(other); }

FiberStack& FiberStack::operator=(FiberStack&& other) noexcept {
  if (this != &other) {
    if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    usable_ = std::exchange(other.usable_, nullptr);
    usable_bytes_ = std::exchange(other.usable_bytes_, 0);
  }
  return *this;
}

FiberStack::~FiberStack() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
}

size_t FiberStack::resident_bytes() const {
  if (usable_ == nullptr) return 0;
  const size_t page = page_bytes();
  std::vector<unsigned char> resident(usable_bytes_ / page);
  if (mincore(usable_, usable_bytes_, resident.data()) != 0) return 0;
  size_t pages = 0;
  for (unsigned char r : resident) pages += r & 1;
  return pages * page;
}

#if defined(__x86_64__)
// flashcore_fiber_switch(save, load): pushes the callee-saved registers and the SSE/x87 control words on the
// current stack, stores the stack pointer in *save, loads `load` and pops the same set. A few nanoseconds;
// swapcontext would add a signal-mask system call to every switch.
extern "C" void flashcore_fiber_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl flashcore_fiber_switch
  .hidden flashcore_fiber_switch
  .type flashcore_fiber_switch,@function
flashcore_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size flashcore_fiber_switch, .-flashcore_fiber_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

void fiber_prepare(FiberContext& fiber, FiberStack& stack, void (*entry)()) {
  // The initial frame, as flashcore_fiber_switch would have left it: control words, six registers, return address.
  const auto top = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(stack.base()) + stack.size()) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;                                      // alignment: `entry` starts with rsp = 8 mod 16, as after a call
  slot[-2] = reinterpret_cast<uint64_t>(entry);      // popped by `ret`
  for (int r = 3; r <= 8; ++r) slot[-r] = 0;         // rbp rbx r12 r13 r14 r15
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  std::memcpy(&slot[-9], control, 8);
  fiber.sp = &slot[-9];
}

void fiber_switch(FiberContext& from, FiberContext& to) { flashcore_fiber_switch(&from.sp, to.sp); }

#else

void fiber_prepare(FiberContext& fiber, FiberStack& stack, void (*entry)()) {
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = stack.base();
  fiber.context.uc_stack.ss_size = stack.size();
  fiber.context.uc_link = nullptr;
  makecontext(&fiber.context, entry, 0);
}

void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.context, &to.context); }

#endif

}  // namespace flashcore::emu_common
