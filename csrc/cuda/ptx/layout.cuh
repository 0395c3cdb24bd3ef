// Register fragment layouts of wgmma: where each value a thread holds sits in the matrix. Written once here and
// used for masking, row reductions, the epilogue's stmatrix, and the S -> P conversion of attention.
//
// PTX ISA reference: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" -> "Register
// Fragments" -> the figures "WGMMA .m64nNk16 register fragment layout for accumulator matrix D" and "... for
// matrix A" (16-bit A types). The functions below are those figures as formulas.
//
// Accumulator D of m64nNk16 (fp32, N/2 registers per thread). Thread t of the warpgroup (0..127) is lane l = t % 32
// of warp w = t / 32; warp w owns rows 16w .. 16w+15. Register i (0 .. N/2-1):
//
//     row(t, i) = 16*w + l/4 + 8 * ((i / 2) % 2)
//     col(t, i) = 8 * (i / 4) + 2 * (l % 4) + (i % 2)
//
// i.e. registers come in groups of 4 per 8-column block: {i%4 = 0, 1} are two adjacent columns of row l/4, {2, 3}
// the same columns of row l/4 + 8. Hence:
//   * each thread holds 2 rows (l/4 and l/4 + 8 of its warp's 16) and N/4 values of each;
//   * a row is shared by the 4 consecutive lanes 4*(l/4) .. 4*(l/4)+3 (a "quad"): a row max / row sum is the
//     thread's own partial over its N/4 values followed by two xor-shuffles (offsets 1 and 2) inside the quad.
//
// Register A of the RS form, m64k16 (16-bit types, 4 b32 registers = 8 values per thread), same thread mapping:
//
//     a[0]: row l/4,     cols 2*(l%4) + {0, 1}        a[2]: row l/4,     cols 8 + 2*(l%4) + {0, 1}
//     a[1]: row l/4 + 8, cols 2*(l%4) + {0, 1}        a[3]: row l/4 + 8, cols 8 + 2*(l%4) + {0, 1}
//
// (low half of each register = lower column). Comparing with the accumulator: the 8 fp32 registers
// d[8j .. 8j+7] cover columns 16j .. 16j+15 of the thread's two rows in exactly the order a[0..3] wants them. So
// the fp32 scores S (64 x N accumulator) become the bf16 A operand of P * V for K-slice j by packing pairs:
// a[r] = pack(d[8j + 2r], d[8j + 2r + 1]), no shuffles (a_frag_from_acc). The same 16x16 block is also the
// operand order of stmatrix.x4 (smem.cuh): matrices {rows 0-7, cols 0-7}, {rows 8-15, cols 0-7},
// {rows 0-7, cols 8-15}, {rows 8-15, cols 8-15}.
#pragma once

#include <cstdint>

#include "smem.cuh"

namespace flashcore::sm90::frag {

constexpr int kWarpSize = 32;
constexpr int kWarpgroupThreads = 128;  // 4 warps issue one wgmma together
constexpr int kWgmmaM = 64;             // rows of D per wgmma: 16 per warp
constexpr int kRowsPerWarp = kWgmmaM / (kWarpgroupThreads / kWarpSize);
constexpr int kQuad = 4;                // lanes sharing a row
constexpr int kRegsPerColBlock = 4;     // registers per 8-column block: 2 columns x 2 rows
constexpr int kColsPerBlock = 8;
constexpr int kRowHalf = 8;             // the second row of a thread is 8 below the first
constexpr int kAccRegsPerK16 = 8;       // accumulator registers per 16 columns = one register-A K slice
constexpr int kARegs = 4;               // b32 registers of a register-A fragment (m64k16, 16-bit types)

template <int N>
constexpr int acc_regs() {
  static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma N is a multiple of 8 in [8, 256]");
  return N / 2;
}

// (thread in warpgroup, accumulator register) -> (row, col) in the 64 x N tile.
__host__ __device__ constexpr int acc_row(int thread, int reg) {
  return kRowsPerWarp * (thread / kWarpSize) + (thread % kWarpSize) / kQuad + kRowHalf * ((reg / 2) % 2);
}
__host__ __device__ constexpr int acc_col(int thread, int reg) {
  return kColsPerBlock * (reg / kRegsPerColBlock) + 2 * (thread % kQuad) + (reg % 2);
}

// Which of the thread's two rows register `reg` belongs to (0: row l/4, 1: row l/4 + 8): index for per-row state
// such as a running max.
__host__ __device__ constexpr int acc_row_half(int reg) { return (reg / 2) % 2; }

// (thread, A register r, half h in {0 = low, 1 = high}) -> (row, col) in the 64 x 16 A slice.
__host__ __device__ constexpr int a_row(int thread, int r) {
  return kRowsPerWarp * (thread / kWarpSize) + (thread % kWarpSize) / kQuad + kRowHalf * (r % 2);
}
__host__ __device__ constexpr int a_col(int thread, int r, int half) {
  return kColsPerBlock * (r / 2) + 2 * (thread % kQuad) + half;
}

// Compile-time proof that acc_row/acc_col is a bijection from (128 threads x N/2 registers) onto the 64 x N tile,
// and that packing d[8j + 2r], d[8j + 2r + 1] into a[r] puts every value where the register-A layout wants it.
template <int N>
constexpr bool acc_layout_is_consistent() {
  constexpr int kRegs = acc_regs<N>();
  bool seen[kWgmmaM * N] = {};
  for (int t = 0; t < kWarpgroupThreads; ++t) {
    for (int i = 0; i < kRegs; ++i) {
      const int r = acc_row(t, i), c = acc_col(t, i);
      if (r < 0 || r >= kWgmmaM || c < 0 || c >= N || seen[r * N + c]) return false;
      seen[r * N + c] = true;
      const int j = i / kAccRegsPerK16, within = i % kAccRegsPerK16;  // K slice j, register within it
      const int ar = within / 2, half = within % 2;
      if (a_row(t, ar) != r || 16 * j + a_col(t, ar, half) != c) return false;
    }
  }
  return true;
}

// --------------------------------------------------------------------------------------------------------------
// Row reductions over a quad (the 4 lanes that share a row). Full-warp masks: every lane takes part.
constexpr unsigned kFullWarpMask = 0xffffffffu;

__device__ __forceinline__ float quad_allreduce_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, 2));
}

__device__ __forceinline__ float quad_allreduce_sum(float v) {
  v += __shfl_xor_sync(kFullWarpMask, v, 1);
  return v + __shfl_xor_sync(kFullWarpMask, v, 2);
}

// --------------------------------------------------------------------------------------------------------------
// fp32 accumulator columns 16j .. 16j+15 -> register-A fragment (bf16 or fp16 pairs) for the RS wgmma's K slice j.
template <bool kBf16, int kRegs>
__device__ __forceinline__ void a_frag_from_acc(const float (&d)[kRegs], int j, uint32_t (&a)[kARegs]) {
#pragma unroll
  for (int r = 0; r < kARegs; ++r) {
    const float lo = d[kAccRegsPerK16 * j + 2 * r], hi = d[kAccRegsPerK16 * j + 2 * r + 1];
    a[r] = kBf16 ? ptx::pack_bf16x2(lo, hi) : ptx::pack_f16x2(lo, hi);
  }
}

// Lane `lane`'s row address for stmatrix.x4 of 16x16 block (rows 0-15 of the warp's slab, 16-byte chunks
// `chunk16` and `chunk16 + 1` of a 128B-swizzled tile with 128-byte rows): lane l addresses row l%8 of matrix
// l/8, i.e. row (l%8) + 8*((l/8)%2) and chunk chunk16 + (l/16). Matches the accumulator order above.
__host__ __device__ constexpr uint32_t stmatrix_sw128_offset(int lane, int row0, int chunk16) {
  const int row = row0 + (lane % 8) + kRowHalf * ((lane / 8) % 2);
  return ptx::swizzle128_offset(static_cast<uint32_t>(row), static_cast<uint32_t>(chunk16 + lane / 16));
}

// Compile-time proof that the stmatrix above is bank-conflict free: shared memory serves one 8x8 matrix (8 lanes'
// 16-byte rows) per phase; those 8 rows must cover all 32 four-byte banks, for every matrix, chunk pair and
// 8-aligned first row.
constexpr uint32_t kBanks = 32, kBankBytes = 4;
constexpr bool stmatrix_sw128_conflict_free() {
  for (int row0 = 0; row0 < 32; row0 += kRowHalf) {  // any 8-aligned first row
    for (int chunk16 = 0; chunk16 < 8; chunk16 += 2) {
      for (int matrix = 0; matrix < 4; ++matrix) {
        bool bank_used[kBanks] = {};
        for (int lane = 8 * matrix; lane < 8 * matrix + 8; ++lane) {
          const uint32_t first_bank = (stmatrix_sw128_offset(lane, row0, chunk16) / kBankBytes) % kBanks;
          for (uint32_t b = 0; b < ptx::kSwizzleChunk / kBankBytes; ++b) {
            if (bank_used[first_bank + b]) return false;
            bank_used[first_bank + b] = true;
          }
        }
      }
    }
  }
  return true;
}

}  // namespace flashcore::sm90::frag
