// Online softmax of the sm_90a forward on wgmma accumulator fragments (layout.cuh): each thread holds two rows of a
// consumer's 64 (acc_row_half 0 and 1) and N/4 scores of each. Base 2 throughout: with y the raw q.k (or the
// softcapped score), score * log2(e) = y * score_mul, so p = exp2(y * score_mul - m) is one FFMA + one MUFU.EX2,
// the scale folded into the FMA. m (per row, log2 units) is shared by the 4 lanes of a quad; l (the row sum) stays a
// per-thread partial until the epilogue, which is exact because every rescale is the same across the quad.
#pragma once

#include <cstdint>

#include "../../fwd_params.h"
#include "../ptx/mufu.cuh"
#include "../ptx/ptx.cuh"
#include "schedule.h"

namespace flashcore::sm90::fwd {

constexpr float kNegInf = -__builtin_huge_valf();
constexpr int kRowsPerThread = 2;  // rows l/4 and l/4 + 8 of the warp's 16

using ptx::exp2_approx;  // MUFU.EX2 (ptx/mufu.cuh)
using ptx::tanh_approx;  // MUFU.TANH

// What the scores of one tile go through before the max: the sign flip of a negative softmax_scale (the kernel
// applies |scale|, fwd_params.h q_sign), the softcap, and the mask. Uniform per warpgroup, decided per tile.
struct ScoreOps {
  bool negate, softcap;
  float tanh_in, tanh_out;
};

// Per-row key interval [lo, hi) of this thread's two rows (absolute key indices), for masking.
struct RowKeys {
  int lo[kRowsPerThread], hi[kRowsPerThread];
};

__device__ __forceinline__ RowKeys row_keys(const Band& band, int wg_row0, int thread_in_wg) {
  RowKeys r;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int row = wg_row0 + frag::acc_row(thread_in_wg, 2 * h);  // register 2h: row half h
    r.lo[h] = band.first_key(row);
    r.hi[h] = band.end_key(row);
  }
  return r;
}

template <int kRegs>
__device__ __forceinline__ void transform_scores(float (&s)[kRegs], const ScoreOps& ops, bool masked,
                                                 const RowKeys& keys, int k0, int thread_in_wg) {
  if (ops.negate) {
#pragma unroll
    for (int i = 0; i < kRegs; ++i) s[i] = -s[i];
  }
  if (ops.softcap) {
#pragma unroll
    for (int i = 0; i < kRegs; ++i) s[i] = ops.tanh_out * tanh_approx(s[i] * ops.tanh_in);
  }
  if (masked) {  // boundary tiles only (schedule.h tile_unmasked decides)
    const int col0 = k0 + frag::acc_col(thread_in_wg, 0);
#pragma unroll
    for (int i = 0; i < kRegs; ++i) {
      const int h = frag::acc_row_half(i);
      const int key = col0 + frag::acc_col(0, i);  // acc_col(t, i) = acc_col(t, 0) + acc_col(0, i)
      s[i] = (key >= keys.lo[h] && key < keys.hi[h]) ? s[i] : kNegInf;
    }
  }
}

// One tile's softmax step, in place: s (transformed scores) -> p = exp2(s * score_mul - m_new) in fp32, the running
// max m and partial sum l updated, and the factor by which O must be rescaled. The 16-bit packing of p into the
// register-A fragments of P * V is a separate step (pack_p): the consumer runs it only after the previous P * V
// GEMM has completed, because packing into the registers that GEMM still reads (ptxas would coalesce the copy)
// makes ptxas serialize the wgmmas (warning C7513).
template <int kRegs>
__device__ __forceinline__ void softmax_step(float (&s)[kRegs], float score_mul, float (&m)[kRowsPerThread],
                                             float (&l)[kRowsPerThread], float (&rescale)[kRowsPerThread]) {
  float tile_max[kRowsPerThread] = {kNegInf, kNegInf};
#pragma unroll
  for (int i = 0; i < kRegs; ++i) tile_max[frag::acc_row_half(i)] = fmaxf(tile_max[frag::acc_row_half(i)], s[i]);
  float shift[kRowsPerThread];
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const float m_new = fmaxf(m[h], frag::quad_allreduce_max(tile_max[h]) * score_mul);  // score_mul > 0
    shift[h] = m_new == kNegInf ? 0.0f : m_new;  // nothing visible yet: exp2(-inf - 0) = 0, never NaN
    rescale[h] = exp2_approx(m[h] - shift[h]);   // m = -inf (first tile): 0, O and l are still 0
    m[h] = m_new;
    l[h] *= rescale[h];
  }
#pragma unroll
  for (int i = 0; i < kRegs; ++i) {
    const int h = frag::acc_row_half(i);
    s[i] = exp2_approx(fmaf(s[i], score_mul, -shift[h]));  // one FFMA + one MUFU.EX2: the scale is in score_mul
    l[h] += s[i];
  }
}

// fp32 P (accumulator layout) -> packed 16-bit register-A fragments: d[2r], d[2r + 1] -> a[r] (layout.cuh), so
// p[4j .. 4j + 3] is the fragment of keys 16j .. 16j + 15.
template <bool kBf16, int kRegs>
__device__ __forceinline__ void pack_p(const float (&s)[kRegs], uint32_t (&p)[kRegs / 2]) {
#pragma unroll
  for (int i = 0; i < kRegs; i += 2) {
    p[i / 2] = kBf16 ? ptx::pack_bf16x2(s[i], s[i + 1]) : ptx::pack_f16x2(s[i], s[i + 1]);
  }
}

template <int kRegs>
__device__ __forceinline__ void rescale_rows(float (&o)[kRegs], const float (&rescale)[kRowsPerThread]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) o[i] *= rescale[frag::acc_row_half(i)];
}

}  // namespace flashcore::sm90::fwd
