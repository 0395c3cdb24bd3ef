// The Hopper (sm_90a) PTX layer, one concern per header. Build with -gencode=arch=compute_90a,code=sm_90a:
// wgmma and setmaxnreg exist only on the arch-specific target.
//
//   smem.cuh      shared-window addresses, the 128B swizzle, stmatrix, st.shared.v2.f32, fp32 -> bf16x2/f16x2 packing
//   mbarrier.cuh  mbarrier init/arrive/expect_tx/try_wait, proxy fences, named barriers, setmaxnreg
//   watchdog.cuh  opt-in (-DFLASHCORE_SM90_WATCHDOG): spin loops that trap, naming what they waited on, after 10 s
//   tma.cuh       host: tensor maps (cuTensorMapEncodeTiled via the runtime's driver entry point), 2D-5D;
//                 device: cp.async.bulk.tensor loads (mbarrier completion), stores and fp32 reduce-adds (bulk
//                 groups), prefetch
//   wgmma.cuh     shared-memory matrix descriptors, wgmma m64nNk16 SS/RS for N = 64..256 (8 sizes), fence/commit/wait,
//                 the accumulator register fence
//   layout.cuh    (thread, register) -> (row, col) of wgmma accumulators and register-A fragments; quad row
//                 reductions; accumulator -> A-fragment conversion; stmatrix addressing
//
// Device functions live in namespace flashcore::sm90::ptx, fragment layouts in flashcore::sm90::frag.
// Built for the host with -DFLASHCORE_SM90_EMU (csrc/cuda_emu), the instructions come from the CPU models
// csrc/cuda_emu/ptx_*.h instead of inline asm; the constexpr helpers (descriptors, swizzle, layouts) are shared.
#pragma once

#include "layout.cuh"
#include "mbarrier.cuh"
#include "smem.cuh"
#include "tma.cuh"
#include "wgmma.cuh"
