// What the host passes to an attention forward kernel, and the arithmetic on it that every vendor shares.
// Plain data only (no torch types): included by the shared host code (fwd.cpp), by the gfx942 kernel
// (hip/fwd_kernel.h) and by the CPU harness that runs that kernel (hip_emu/harness_fwd.cpp).
//
// Semantics are those of flashcore/_schema.py: query i of a sequence sees key j when
//   i + off - window_left <= j <= i + off + window_right,   off = seqlen_k - seqlen_q   (bottom-right aligned),
// a window side of -1 being unbounded (causal: window_right = 0); scores are softmax_scale * q.k, or with softcap
// > 0, softcap * tanh(softmax_scale * q.k / softcap); rows that see no key get out = 0 and lse = -inf.
#pragma once

#include <cstdint>

#include "bwd_preprocess_params.h"  // HalfType

// Builds whose vendor has a forward kernel (a launch_fwd below): the shared host code (fwd.cpp) and the op
// registration (flashcore.cpp) exist only there: the gfx942 forward (hip/) and the sm_90a forward (cuda/fwd/).
#if defined(FLASHCORE_HIP) || defined(FLASHCORE_CUDA)
#define FLASHCORE_HAS_FWD 1
#else
#define FLASHCORE_HAS_FWD 0
#endif

namespace flashcore {

struct FwdParams {
  const void* q;  // (batch, seqlen_q, heads_q, head_dim), or varlen (total_q, heads_q, head_dim); head_dim contiguous
  const void* k;  // (batch, seqlen_k, heads_kv, head_dim), or varlen (total_k, heads_kv, head_dim)
  const void* v;  // like k
  void* out;      // like q
  float* lse;     // dense (batch, heads_q, seqlen_q), varlen (heads_q, total_q); float32
  const int32_t* cu_seqlens_q;  // (batch + 1,) or nullptr (dense)
  const int32_t* cu_seqlens_k;  // (batch + 1,) or nullptr

  // Strides in elements. Row s of head h of sequence b starts at ptr + b*stride_b + (start_b + s)*stride_s +
  // h*stride_h, start_b = cu_seqlens[b] (varlen, stride_b = 0) or 0 (dense).
  int64_t q_stride_b, q_stride_s, q_stride_h;
  int64_t k_stride_b, k_stride_s, k_stride_h;
  int64_t v_stride_b, v_stride_s, v_stride_h;
  int64_t o_stride_b, o_stride_s, o_stride_h;
  int64_t lse_stride_b, lse_stride_h;  // lse of row s: lse + b*lse_stride_b + h*lse_stride_h + start_b + s

  // Rows of q/out and of k/v along the sequence dim: seqlen (dense) or total (varlen). The sm_90a kernel's TMA
  // tensor maps need the tensors' extent; per-sequence bounds come from seqlen_* / cu_seqlens_*.
  int64_t rows_q, rows_k;

  int32_t batch, heads_q, heads_kv, head_dim;
  int32_t seqlen_q, seqlen_k;  // dense: the lengths; varlen: max_seqlen_q / max_seqlen_k (grid size only)
  int32_t window_left, window_right;  // -1: unbounded
  float softmax_scale, softcap;
  HalfType dtype;

  // Derived by fwd_finish_params, read by the kernels. The softmax runs in base 2 (exp2 is one instruction):
  //   score_log2 = score * log2(e) = y * score_mul, with y = q.k (no softcap) or y = tanh_out * tanh(q.k * tanh_in)
  float score_mul;     // no softcap: |softmax_scale| * log2(e); softcap: log2(e). Never below FLT_MIN, so that
                       // -inf * score_mul stays -inf (a zero scale would make it NaN)
  float tanh_in;       // softmax_scale / softcap (softcap > 0)
  float tanh_out;      // softcap
  uint32_t q_sign;     // 0x80008000 when softmax_scale < 0 without softcap: the kernel negates q (exact) so that
                       // the scale it applies is positive and max(q.k) is the max score
};

// The gfx942 kernel reads a K/V tile through a buffer resource spanning its valid rows, so rows must not overlap
// (row stride >= head_dim, unless there is a single row) and in-tile offsets must stay far below 2^31 bytes.
// The host copies K/V that break this (broadcast rows, huge strides) into contiguous tensors first.
constexpr int64_t kFwdMaxRowStride = int64_t(1) << 23;  // elements
inline bool fwd_rows_addressable(int64_t rows, int64_t row_stride, int64_t head_dim) {
  return rows <= 1 || (row_stride >= head_dim && row_stride <= kFwdMaxRowStride);
}

constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = exp2(x * log2(e)); exp2 is one instruction on both GPUs
constexpr float kLn2 = 0.6931471805599453f;     // lse = log2-sum-exp * ln(2)
constexpr float kFltMin = 1.17549435e-38f;

// A tensor as the shared parameter code sees it: data pointer, sizes and strides (elements), no torch types, so
// the CPU harness builds FwdParams with the same code as the extension.
struct Strided {
  const void* data;
  int dim;
  int64_t size[4];
  int64_t stride[4];
};

// Fills the derived fields from softmax_scale and softcap.
inline void fwd_finish_params(FwdParams& p) {
  const float scale = p.softmax_scale;
  if (p.softcap > 0.0f) {
    p.score_mul = kLog2e;
    p.tanh_in = scale / p.softcap;
    p.tanh_out = p.softcap;
    p.q_sign = 0u;
  } else {
    const float magnitude = (scale < 0.0f ? -scale : scale) * kLog2e;
    p.score_mul = magnitude < kFltMin ? kFltMin : magnitude;
    p.tanh_in = 0.0f;
    p.tanh_out = 0.0f;
    p.q_sign = scale < 0.0f ? 0x80008000u : 0u;
  }
}

// FwdParams for checked arguments (csrc/fwd.cpp checks them). Dense: q, out (batch, seqlen_q, heads_q, head_dim),
// k, v (batch, seqlen_k, heads_kv, head_dim), lse (batch, heads_q, seqlen_q) contiguous. Varlen (cu_seqlens_q
// given): q, out (total_q, heads_q, head_dim), k, v (total_k, heads_kv, head_dim), lse (heads_q, total_q)
// contiguous, batch = len(cu_seqlens) - 1 and max_seqlen_* bound every sequence. window_* as the schema gives
// them (-1 unbounded); causal forces window_right = 0.
inline FwdParams make_fwd_params(const Strided& q, const Strided& k, const Strided& v, const Strided& out, float* lse,
                                 const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k, int32_t batch,
                                 int32_t max_seqlen_q, int32_t max_seqlen_k, float softmax_scale, bool causal,
                                 int32_t window_left, int32_t window_right, float softcap, HalfType dtype) {
  FwdParams p{};
  p.q = q.data, p.k = k.data, p.v = v.data, p.out = const_cast<void*>(out.data), p.lse = lse;
  p.cu_seqlens_q = cu_seqlens_q, p.cu_seqlens_k = cu_seqlens_k;
  const bool varlen = cu_seqlens_q != nullptr;
  const int s = varlen ? 0 : 1;  // dim of the sequence position; heads follow it
  auto strides = [&](const Strided& t, int64_t& stride_b, int64_t& stride_s, int64_t& stride_h) {
    stride_b = varlen ? 0 : t.stride[0];
    stride_s = t.stride[s];
    stride_h = t.stride[s + 1];
  };
  strides(q, p.q_stride_b, p.q_stride_s, p.q_stride_h);
  strides(k, p.k_stride_b, p.k_stride_s, p.k_stride_h);
  strides(v, p.v_stride_b, p.v_stride_s, p.v_stride_h);
  strides(out, p.o_stride_b, p.o_stride_s, p.o_stride_h);
  p.rows_q = varlen ? q.size[0] : q.size[1];
  p.rows_k = varlen ? k.size[0] : k.size[1];
  p.batch = batch;
  p.heads_q = static_cast<int32_t>(q.size[s + 1]);
  p.heads_kv = static_cast<int32_t>(k.size[s + 1]);
  p.head_dim = static_cast<int32_t>(q.size[s + 2]);
  p.seqlen_q = varlen ? max_seqlen_q : static_cast<int32_t>(q.size[1]);
  p.seqlen_k = varlen ? max_seqlen_k : static_cast<int32_t>(k.size[1]);
  const int64_t lse_rows = varlen ? q.size[0] : q.size[1];  // total_q, or seqlen_q
  p.lse_stride_b = varlen ? 0 : p.heads_q * lse_rows;
  p.lse_stride_h = lse_rows;
  p.window_left = window_left;
  p.window_right = causal ? 0 : window_right;
  p.softmax_scale = softmax_scale;
  p.softcap = softcap;
  p.dtype = dtype;
  fwd_finish_params(p);
  return p;
}

// Implemented once per vendor that has a forward kernel (hip/fwd_gfx942.hip, cuda/fwd_sm90.cu): launches on the current stream of
// the current device and checks the launch. The caller has checked every argument and set the device.
void launch_fwd(const FwdParams& params);

}  // namespace flashcore
