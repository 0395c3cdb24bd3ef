// MFMA: the gfx942 matrix instructions flashcore uses, and which lane holds which matrix element.
//
//   instruction (clang builtin)                          shape      cycles  FLOPs   acc regs/lane
//   v_mfma_f32_32x32x8_bf16 (..._32x32x8bf16_1k)         32x32x8    32      16384   16
//   v_mfma_f32_32x32x8_f16  (..._32x32x8f16)             32x32x8    32      16384   16
//   v_mfma_f32_16x16x16_bf16 (..._16x16x16bf16_1k)       16x16x16   16      8192    4
//   v_mfma_f32_16x16x16_f16 (..._16x16x16f16)            16x16x16   16      8192    4
// (The `_1k` bf16 forms are gfx942's native bf16 MFMAs; the older 32x32x4bf16 ones run at half rate.)
// One matrix core per SIMD: 16384 FLOPs / 32 cycles x 4 SIMDs x 304 CUs x 2.1 GHz = 1307 TFLOP/s, bf16 peak.
//
// D = A (M x K) * B (K x N) + C, fp32 accumulation; M = N. Per lane l (0..63), i = 0..3 the 16-bit elements of
// the 8-byte operand (element i in word i / 2, bits 16 (i % 2) + 15 : 16 (i % 2)):
//   32x32x8:   a[i] = A[l % 32][4 (l / 32) + i]   b[i] = B[4 (l / 32) + i][l % 32]
//              c[4 j + i] = C[8 j + 4 (l / 32) + i][l % 32],   j = 0..3
//   16x16x16:  a[i] = A[l % 16][4 (l / 16) + i]   b[i] = B[4 (l / 16) + i][l % 16]
//              c[i] = C[4 (l / 16) + i][l % 16]
// So a lane holds 4 consecutive k of one A row and one B column, and its accumulators are (part of) one column
// of C. Sources: the CDNA3 ISA guide's MFMA operand tables, AMD's matrix instruction calculator (CDNA3 output
// compared element by element for all four instructions), Composable Kernel's warp-gemm attributes; the CPU
// harness models them separately (csrc/hip_emu/builtins.h) and tests/test_hip_emulated.py checks all lanes.
//
// Consequences the attention kernel builds on (csrc/hip/fwd_kernel.h):
// - The contraction index k may be permuted freely as long as A and B use the same permutation; so a lane can
//   read 8 consecutive k (one 16-byte LDS read) and feed them to two successive MFMAs.
// - The rows of A may be permuted: row m of the product comes out where the layout puts row m, whatever data
//   was loaded there. The kernel uses this to make accumulator registers land on consecutive keys / columns.
// - 32x32 C column = one lane pair (l, l + 32): a query row kept as a C column needs one cross-lane exchange.
#pragma once

#include "compat.h"
#include "types.h"

#if defined(FLASHCORE_HIP_EMU)
#include "../hip_emu/builtins.h"
#endif

namespace flashcore::gfx942 {

// Lane layouts as functions, for code that places data generically (the MFMA probe kernel and its test).
template <int M>
struct MfmaLayout {
  static_assert(M == 32 || M == 16);
  static constexpr int kK = 4 * kWaveSize / M;     // 8 or 16
  static constexpr int kAcc = M * M / kWaveSize;   // accumulator registers per lane: 16 or 4
  static constexpr int a_row(int lane) { return lane % M; }
  static constexpr int a_k(int lane, int i) { return 4 * (lane / M) + i; }
  static constexpr int b_col(int lane) { return lane % M; }
  static constexpr int b_k(int lane, int i) { return 4 * (lane / M) + i; }
  static constexpr int c_row(int lane, int r) {
    return M == 32 ? 8 * (r / 4) + 4 * (lane / 32) + r % 4 : 4 * (lane / 16) + r;
  }
  static constexpr int c_col(int lane) { return lane % M; }
};

// Two A-row permutations of a 32x32x8 MFMA (rows may be permuted freely, see above) that the attention kernels
// use to make a lane's accumulator registers land on consecutive matrix elements:
//   swap_bits_2_3(m): row m holds element (m with bits 2 and 3 swapped). Lane half h's registers of k-steps 2t and
//                     2t + 1 (rows 16t + 8jj + 4h + i) then hold elements 16t + 8h + 0..7: one 16-byte LDS read of
//                     the matching operand feeds both MFMAs that consume those registers as B.
//   contiguous_16(m): row m holds element 16 (bit 2) + 8 (bit 4) + 4 (bit 3) + (m & 3), so lane half h's 16
//                     accumulator registers are elements 16h..16h+15 (two 16-byte stores).
constexpr int swap_bits_2_3(int m) { return (m & ~12) | (m & 4) << 1 | (m & 8) >> 1; }
constexpr int contiguous_16(int m) { return (m & 3) | (m & 8) >> 1 | (m & 16) >> 1 | (m & 4) << 2; }

// The two 8-byte MFMA operands in a 16-byte LDS / global read: 8 consecutive k feed two successive MFMAs.
FLASHCORE_DEVICE u32x2 low8(u32x4 v) { return u32x2{v[0], v[1]}; }
FLASHCORE_DEVICE u32x2 high8(u32x4 v) { return u32x2{v[2], v[3]}; }

#if !defined(FLASHCORE_HIP_EMU)
typedef short s16x4 __attribute__((ext_vector_type(4)));
typedef _Float16 f16x4 __attribute__((ext_vector_type(4)));
#endif

// c + a * b on the 32x32x8 MFMA of element type E (Bf16 or Fp16).
template <class E>
FLASHCORE_DEVICE f32x16 mfma_32x32x8(u32x2 a, u32x2 b, f32x16 c) {
#if defined(FLASHCORE_HIP_EMU)
  return emu::mfma<32>(E::kIsBf16 ? "v_mfma_f32_32x32x8_bf16" : "v_mfma_f32_32x32x8_f16", E::kIsBf16, a, b, c);
#else
  if constexpr (E::kIsBf16) {
    return __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(bit_cast<s16x4>(a), bit_cast<s16x4>(b), c, 0, 0, 0);
  } else {
    return __builtin_amdgcn_mfma_f32_32x32x8f16(bit_cast<f16x4>(a), bit_cast<f16x4>(b), c, 0, 0, 0);
  }
#endif
}

// c + a * b on the 16x16x16 MFMA of element type E.
template <class E>
FLASHCORE_DEVICE f32x4 mfma_16x16x16(u32x2 a, u32x2 b, f32x4 c) {
#if defined(FLASHCORE_HIP_EMU)
  return emu::mfma<16>(E::kIsBf16 ? "v_mfma_f32_16x16x16_bf16" : "v_mfma_f32_16x16x16_f16", E::kIsBf16, a, b, c);
#else
  if constexpr (E::kIsBf16) {
    return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(bit_cast<s16x4>(a), bit_cast<s16x4>(b), c, 0, 0, 0);
  } else {
    return __builtin_amdgcn_mfma_f32_16x16x16f16(bit_cast<f16x4>(a), bit_cast<f16x4>(b), c, 0, 0, 0);
  }
#endif
}

}  // namespace flashcore::gfx942
