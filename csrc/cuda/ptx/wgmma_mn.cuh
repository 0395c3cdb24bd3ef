// wgmma additions the attention backward needs (kept out of wgmma.cuh so the forward can extend that one freely):
//   * m64n32k16 SS and RS (wgmma.cuh has the attention tiles' N from 64 up), and wgmma_ss_n<N> / wgmma_rs_n<N>,
//     one entry for every N;
//   * how the backward uses wgmma.cuh's MN-major 128B-swizzled descriptor (mnmajor_sw128_desc): its transposed
//     operands (dO and Q as the B of dV = P^T dO and dK = dS^T Q, K as the B of dQ = dS K, dS^T as the A of dQ)
//     sit in shared memory exactly as TMA wrote them, rows along K and 64 contiguous M/N values per 128-byte row.
//
// MN-major, 128B swizzle (PTX ISA "Shared Memory Matrix Layout", the canonical MN-major layouts; in element units
// with T = 8 16-bit values = 16 bytes, CUTLASS writes it ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))):
//   * along M/N: 8 chunks of 16 bytes = 64 values are contiguous (one 128-byte swizzled row); the next 64 values
//     ("m" mode) are LBO bytes further;
//   * along K: 8 rows of 128 bytes form a 1024-byte swizzle atom; the next 8 rows ("k" mode) are SBO bytes further.
// Our tiles are stored as column blocks [M/N / 64][rows along K][64]: each block is a K-major-looking TMA box of
// 64 columns, so SBO = 1024 (8 rows) and LBO = rows x 128 bytes (one column block). A K step of 16 rows moves the
// start address by 2048 bytes: two whole atoms, so the matrix base offset (bits 49-51) stays 0.
// The backward cuts every MN-major operand into pieces inside one 64-column block (N <= 64), so LBO is never
// used by it; a piece may start 32 columns (64 bytes) into the block, the MN-major analogue of the K-major
// "advance inside the swizzled row" (the swizzle XOR applies to the final address bits). Unlike the K-major form,
// nothing here has run on a GPU yet: the GPU tests of the backward are its proof.
#pragma once

#include <cstdint>

#include "wgmma.cuh"

namespace flashcore::sm90::ptx {

// ---------------------------------------------------------------------------------------------------------------
// m64n32k16: the S / dP GEMMs of a warpgroup that owns 32 of a tile's 64 queries (SS), and the 32-column pieces
// of a head dim that is not a multiple of 64 per warpgroup (96, 192: SS, and RS for the dV / dK GEMMs). The
// operand numbering follows wgmma.cuh: accumulators first, then desc-a (or the four A registers), desc-b, scale-d
// (register -> predicate), imm-scale-a, imm-scale-b, [imm-trans-a,] imm-trans-b.
template <int N>
struct WgmmaExtra;

}  // namespace flashcore::sm90::ptx

#if defined(FLASHCORE_SM90_EMU)
namespace flashcore::sm90::ptx {
template <>
struct WgmmaExtra<32> : WgmmaEmu<32> {};  // ptx_wgmma.h (included by wgmma.cuh) models every N
}  // namespace flashcore::sm90::ptx
#else
namespace flashcore::sm90::ptx {

// "%0 .. %15": asm templates need literal operand numbers; the tail operands follow as %16 .. %22.
#define FC_R16 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define FC_O8(d, i)                                                                                            \
  "+f"(d[(i) + 0]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])

#define FC_WGMMA_N32_TEXT(TYPE)                                                                               \
  "{\n  .reg .pred p;\n  setp.ne.b32 p, %18, 0;\n"                                                            \
  "  wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE " {" FC_R16 "}, %16, %17, p, %19, %20, %21, %22;\n}\n"
#define FC_WGMMA_N32_RS_TEXT(TYPE)                                                                            \
  "{\n  .reg .pred p;\n  setp.ne.b32 p, %21, 0;\n"                                                            \
  "  wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE " {" FC_R16 "}, {%16, %17, %18, %19}, %20, p, %22, "  \
  "%23, %24;\n}\n"
template <>
struct WgmmaExtra<32> {
  template <MmaType kType, int kScaleA, int kScaleB, int kTransA, int kTransB>
  __device__ static __forceinline__ void ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    if constexpr (kType == MmaType::kBf16) {
      asm volatile(FC_WGMMA_N32_TEXT("bf16")
                   : FC_O8(d, 0), FC_O8(d, 8)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kScaleA), "n"(kScaleB), "n"(kTransA), "n"(kTransB));
    } else {
      asm volatile(FC_WGMMA_N32_TEXT("f16")
                   : FC_O8(d, 0), FC_O8(d, 8)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kScaleA), "n"(kScaleB), "n"(kTransA), "n"(kTransB));
    }
  }
  template <MmaType kType, int kScaleA, int kScaleB, int kTransB>
  __device__ static __forceinline__ void rs(float (&d)[16], const uint32_t (&a)[4], uint64_t desc_b,
                                            uint32_t scale_d) {
    if constexpr (kType == MmaType::kBf16) {
      asm volatile(FC_WGMMA_N32_RS_TEXT("bf16")
                   : FC_O8(d, 0), FC_O8(d, 8)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kScaleA),
                     "n"(kScaleB), "n"(kTransB));
    } else {
      asm volatile(FC_WGMMA_N32_RS_TEXT("f16")
                   : FC_O8(d, 0), FC_O8(d, 8)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kScaleA),
                     "n"(kScaleB), "n"(kTransB));
    }
  }
};

#undef FC_WGMMA_N32_RS_TEXT
#undef FC_WGMMA_N32_TEXT
#undef FC_O8
#undef FC_R16

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU

namespace flashcore::sm90::ptx {

// D (+)= A * B from shared memory for any N the backward uses (32, 64, 128, 256). kTransA / kTransB: 1 for an
// MN-major operand (mnmajor_sw128_desc), 0 for K-major (kmajor_sw128_desc).
template <int N, MmaType kType, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss_n(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  if constexpr (N == 32) {
    WgmmaExtra<N>::template ss<kType, 1, 1, kTransA, kTransB>(d, desc_a, desc_b, accumulate ? 1u : 0u);
  } else {
    wgmma_ss<N, kType, kTransA, kTransB>(d, desc_a, desc_b, accumulate);
  }
}

// D (+)= A * B, A from registers (layout.cuh: a 16-column slice of an accumulator, packed), B from shared memory,
// for any N the backward uses. kTransB as above.
template <int N, MmaType kType, int kTransB>
__device__ __forceinline__ void wgmma_rs_n(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                           bool accumulate) {
  if constexpr (N == 32) {
    WgmmaExtra<N>::template rs<kType, 1, 1, kTransB>(d, a, desc_b, accumulate ? 1u : 0u);
  } else {
    wgmma_rs<N, kType, kTransB>(d, a, desc_b, accumulate);
  }
}

}  // namespace flashcore::sm90::ptx
