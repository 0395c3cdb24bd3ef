// What the sm_90a harness entry points (harness_gemm.cpp, harness_fwd.cpp, harness_bwd.cpp) share: the run options
// a test passes (pretend SM count, the engine's interleaving, the kernels' static or dynamic tile schedule), the
// launch statistics it gets back, the head dim and element type of a per-instantiation build
// (-DFLASHCORE_EMU_HEAD_DIM=64 -DFLASHCORE_EMU_BF16=1: one object per kernel instantiation, so they compile in
// parallel), and the views of ctypes tensors (csrc/emu_harness_views.h, shared with the gfx942 harness).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "../emu_harness_views.h"
#include "emu.h"

namespace flashcore::emu_harness {

namespace emu = cuda_emu;

// Mirrored by tests/test_cuda_sm90_emulated.py (class EmuRun): keep the two in step.
struct EmuRun {
  int32_t num_sms;          // the SM count the host code plans for: the persistent grid's size
  int32_t l2_bytes;         // the L2 size the forward's head grouping plans for
  int32_t schedule;         // emu::Schedule: the engine's choice of the next fiber
  int32_t max_async_delay;  // emu::LaunchOptions::max_async_delay
  uint64_t seed;            // the engine's interleaving
  int32_t static_schedule;  // 1: the kernels' static round-robin (FLASHCORE_SM90_STATIC_SCHEDULE=1), 0: dynamic
  int32_t registers;        // registers per thread ptxas gave the warp-specialized kernel (resources.json), for
                            // the model's setmaxnreg pool check; 0: unknown (the check is skipped)
  double timeout_seconds;   // per launch
};

constexpr int kStats = 5;  // ctas, fiber_switches, collectives, barriers, async_ops (of the call's main kernel)

inline emu::LaunchOptions launch_options(const EmuRun& run, int registers) {
  emu::LaunchOptions o;
  o.registers_per_thread = registers;
  o.schedule = static_cast<emu::Schedule>(run.schedule);
  o.seed = run.seed;
  o.max_async_delay = run.max_async_delay;
  o.timeout_seconds = run.timeout_seconds;
  return o;
}

inline void add_stats(const emu::LaunchStats& s, uint64_t* out) {
  if (out == nullptr) return;
  out[0] += s.ctas, out[1] += s.fiber_switches, out[2] += s.collectives, out[3] += s.barriers, out[4] += s.async_ops;
}

// A 1-D grid of `blocks` CTAs of `threads` threads running kernel(), `registers` per thread at entry (0: unknown);
// statistics added into stats (kStats values) unless null.
inline std::string launch_1d(int blocks, int threads, int smem_bytes, const std::function<void()>& kernel,
                             const EmuRun& run, int registers, uint64_t* stats) {
  emu::LaunchStats s;
  emu::Dim3 grid, block;
  grid.x = static_cast<unsigned>(blocks);
  block.x = static_cast<unsigned>(threads);
  const std::string message =
      emu::launch(grid, block, static_cast<size_t>(smem_bytes), kernel, launch_options(run, registers), &s);
  add_stats(s, stats);
  return message;
}

// Zero-filled device-like memory the harness owns (counters, workspaces): `align`-byte aligned, like the caching
// allocator's blocks.
struct ZeroBuffer {
  std::unique_ptr<void, void (*)(void*)> data{nullptr, std::free};
  ZeroBuffer(size_t bytes, size_t align) {
    const size_t rounded = (bytes + align - 1) / align * align;
    data.reset(std::aligned_alloc(align, rounded == 0 ? align : rounded));
    std::memset(data.get(), 0, rounded == 0 ? align : rounded);
  }
  void* get() const { return data.get(); }
};

}  // namespace flashcore::emu_harness

#if defined(FLASHCORE_EMU_HEAD_DIM) && defined(FLASHCORE_EMU_BF16)
#if FLASHCORE_EMU_BF16
#define FLASHCORE_EMU_TYPE_NAME bf16
#else
#define FLASHCORE_EMU_TYPE_NAME fp16
#endif
// Builds of the bisecting switches (fwd/traits.cuh, bwd_sm90_config.cuh) get a symbol of their own.
#if defined(FLASHCORE_FWD_SM90_OUT_IN_Q)
#define FLASHCORE_EMU_VARIANT _out_in_q
#elif defined(FLASHCORE_FWD_SM90_D64_TWO_CONSUMERS)
#define FLASHCORE_EMU_VARIANT _two_consumers
#elif defined(FLASHCORE_FWD_SM90_D128_N176)
#define FLASHCORE_EMU_VARIANT _n176
#elif defined(FLASHCORE_FWD_SM90_ITEM_PIPELINE)
#define FLASHCORE_EMU_VARIANT _item_pipeline
#elif defined(FLASHCORE_BWD_SM90_SS_DKV)
#define FLASHCORE_EMU_VARIANT _ss_dkv
#elif defined(FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG)
#define FLASHCORE_EMU_VARIANT _dq_lag_pp
#elif defined(FLASHCORE_BWD_SM90_DQ_LAG)
#define FLASHCORE_EMU_VARIANT _dq_lag
#else
#define FLASHCORE_EMU_VARIANT
#endif
// emu_sm90_<op>_d<D>_<bf16|fp16>[_out_in_q | _two_consumers | _n176 | _item_pipeline | _ss_dkv | _dq_lag |
// _dq_lag_pp]: the C symbol of this build's entry point.
#define FLASHCORE_EMU_SYMBOL(op)                                                                                 \
  FLASHCORE_CAT(FLASHCORE_CAT(FLASHCORE_CAT(FLASHCORE_CAT(op, _d), FLASHCORE_EMU_HEAD_DIM),                     \
                              FLASHCORE_CAT(_, FLASHCORE_EMU_TYPE_NAME)),                                        \
                FLASHCORE_EMU_VARIANT)
#endif
