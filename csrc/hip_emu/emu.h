// A lane-accurate CPU model of how a gfx942 block runs, enough to execute flashcore's HIP kernels unchanged.
//
// - Every work-item is a fiber with its own stack; the fibers of one block run on one OS thread and switch only
//   where the hardware would make lanes or waves wait for each other: block_barrier (s_barrier) and wave
//   collectives (MFMA, ds_bpermute, readfirstlane, ...). Between two such points each lane runs alone, in
//   program order, exactly as its own SIMD lane would.
// - A wave collective is a rendezvous of the 64 lanes of one wave: each deposits a pointer to its operands and
//   to its result, the last to arrive computes the instruction for all 64 from the hardware's lane layouts
//   (csrc/hip_emu/builtins.h) and writes every lane's result, then all continue. Lanes that call different
//   collectives at the same point (divergence the hardware would not allow) stop the launch with an error.
// - LDS: 64 KiB per block, filled with 0xff (NaN in bf16/fp16) before the block starts.
// - Global memory: every access a kernel makes through csrc/hip/memory.h is checked against the tensors the
//   launcher registered; an access outside all of them stops the launch with an error naming the lane.
// - Deadlock (every live lane waiting and nothing can complete) stops the launch with an error.
// Blocks are independent and run on a small pool of OS threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace flashcore::emu {

constexpr int kWaveSize = 64;
constexpr size_t kLdsBytes = 64 * 1024;  // LDS per CU on gfx942; a block may use all of it

// --- inside a kernel (called from the current fiber) ----------------------------------------------------------
int thread_id();          // threadIdx.x
int block_id(int dim);    // blockIdx.{x,y,z}
void block_barrier();     // s_barrier: every live lane of the block arrives before any continues
uint8_t* lds(size_t bytes);  // this block's LDS; `bytes` must fit in kLdsBytes
void check_global(const void* p, size_t bytes, bool write);  // bounds check of one lane's global access
[[noreturn]] void fail(const std::string& message);  // stop this launch; launch() returns the message

// The rendezvous behind every wave-level instruction. `compute(ctx, ins, outs)` runs once, in the last lane to
// arrive, with ins[l] / outs[l] pointing at lane l's operands / result (l = 0..63, lane order).
using Compute = void (*)(const void* ctx, const void* const* ins, void* const* outs);
void wave_sync(const char* name, const void* in, void* out, Compute compute, const void* ctx);

template <class In, class Out, class Fn>
Out wave_collective(const char* name, const In& in, const Fn& fn) {  // fn(const In* ins[64], Out* outs[64])
  Out out{};
  wave_sync(
      name, &in, &out,
      [](const void* ctx, const void* const* ins, void* const* outs) {
        (*static_cast<const Fn*>(ctx))(reinterpret_cast<const In* const*>(ins), reinterpret_cast<Out* const*>(outs));
      },
      &fn);
  return out;
}

int readfirstlane(int v);  // v_readfirstlane_b32: lane 0's value in every lane

// Spins until the global int32 at `counter` equals `value` (acquire): one lane of a block waiting for other
// blocks, which run on other OS threads (or ran before it on this one). Fails the launch after kSpinSeconds.
void wait_counter(const int32_t* counter, int32_t value);
constexpr double kSpinSeconds = 30.0;  // far beyond any test's run time: only a real ordering deadlock gets here

// --- launching (host side of the harness) ----------------------------------------------------------------------
struct Dim3 {
  int x = 1, y = 1, z = 1;
};

struct GlobalRange {
  const void* begin;
  size_t bytes;
  bool writable;
};

struct LaunchStats {
  uint64_t blocks = 0, fiber_switches = 0, wave_collectives = 0, barriers = 0;
};

// Order in which a block's fibers run between synchronisation points. Any order is a legal execution; the
// tests run kernels under all three so that a missing barrier (a race between waves) changes the results.
enum class Schedule : int {
  kRoundRobin = 0,      // every lane one step per round: the waves advance nearly in lock step
  kWavesAscending = 1,  // wave 0 runs until it waits at a barrier, then wave 1, ...
  kWavesDescending = 2, // the last wave first
};

// For the harness's C entry points: 0 when `message` is empty, else -1 with the message copied into `error`.
int to_c_status(const std::string& message, char* error, int error_bytes);

// Runs `kernel` (the kernel body, called once per work-item) over `grid` blocks of `block_threads` work-items
// (a multiple of 64) on up to `os_threads` threads. Returns "" on success, else the first error.
// reverse_blocks: hand out blocks last to first instead of first to last (blocks that wait on each other in
// launch order then need one OS thread each to make progress).
std::string launch(Dim3 grid, int block_threads, const std::function<void()>& kernel,
                   const GlobalRange* ranges, int num_ranges, int os_threads, LaunchStats* stats,
                   Schedule schedule = Schedule::kRoundRobin, bool reverse_blocks = false);

}  // namespace flashcore::emu
