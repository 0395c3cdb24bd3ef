// Tile table of the gfx942 (MI300X) forward kernel, csrc/hip/fwd_kernel.h: one row per head dim.
// The kernel reads it through FwdTile<D> (a constexpr lookup); flashcore/advise.py parses this file as text, so
// keep the format: one "columns" line, then one X(...) row of integers per head dim.
//   block_m         query rows per block = waves x 32 (one 32x32 MFMA column block per wave)
//   block_n         keys per K/V tile
//   waves           waves per block (one per SIMD of the CU)
//   waves_per_simd  occupancy the register allocator must keep (__launch_bounds__); the ISA checks record what
//                   it achieved (csrc/hip/isa_budget.json, tests/test_hip_isa.py)
// Per lane, the registers that live through the K/V loop are O^T accumulator D/2, Q fragments D/4, S^T
// block_n/2, P block_n/4, staged K tile block_n*D/512, staged V tile 16, plus LDS fragments in flight and
// addresses. Occupancy is the most waves per SIMD the allocator reaches without spilling (clang 19):
//   D    Keys  LDS (K + V^T)   waves/SIMD  why
//   64   64    8 + 8 KiB       3           4 waves (128 VGPRs) spills. 64 keys keep the MFMAs per barrier up
//   96   64    12 + 12 KiB     2           3 waves (168 VGPRs) spills
//   128  64    16 + 16 KiB     2           LDS 32 KiB: two blocks (8 waves) fill a CU's 64 KiB exactly
//   192  32    12 + 12 KiB     2           32 keys keep S^T at one accumulator so D/2 + D/4 + the rest fits 256
//   256  32    16 + 16 KiB     1           O^T 128 + Q 64 leave too little of 256; O^T lives in AGPRs
#pragma once

// columns: head_dim, block_m, block_n, waves, waves_per_simd
#define FLASHCORE_TILES_GFX942_FWD(X) \
  X(64, 128, 64, 4, 3) \
  X(96, 128, 64, 4, 2) \
  X(128, 128, 64, 4, 2) \
  X(192, 128, 32, 4, 2) \
  X(256, 128, 32, 4, 1)
