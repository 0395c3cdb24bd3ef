// What the host passes to an attention backward kernel, shared by every vendor. Plain data only (no torch types):
// included by the shared host code (bwd.cpp), by the vendor kernels and by the CPU harness.
//
// The backward of out = softmax(scores) . v, lse = logsumexp(scores), per query row i and visible key j
// (masks, softcap and scale exactly as the forward: fwd_params.h):
//   P_ij  = exp2(score_log2_ij - lse_i * log2(e))     recomputed from the forward's lse (natural log units);
//                                                    a row with lse_i = -inf saw no key: its P is 0, not NaN
//   dV_j += P_ij dO_i          dP_ij = dO_i . V_j      dS_ij = P_ij (dP_ij - delta_i)
//   dQ_i += dS'_ij K_j         dK_j += dS'_ij Q_i      (dS' = dS times d score / d(q.k): softmax_scale, or with
//                                                    softcap, softmax_scale * (1 - tanh^2))
// with delta_i = rowsum(dO_i * out_i) - dlse_i, computed by the preprocess kernel (bwd_preprocess_params.h) before
// the main kernel runs. GQA/MQA: dK/dV of a K/V head sum over the heads_q / heads_kv query heads that read it.
#pragma once

#include <cstdint>

#include "fwd_params.h"

// Builds whose vendor has a backward kernel (a launch_bwd below): the shared host code (bwd.cpp) and the `bwd`
// registration (flashcore.cpp) exist only there. One line per vendor, so each kernel switches its own on.
#if defined(FLASHCORE_CUDA)
#define FLASHCORE_HAS_BWD 1  // csrc/cuda/bwd_sm90.cu
#elif defined(FLASHCORE_HIP)
#define FLASHCORE_HAS_BWD 1  // the gfx942 backward: csrc/hip/bwd_gfx942.hip defines launch_bwd
#else
#define FLASHCORE_HAS_BWD 0
#endif

namespace flashcore {

constexpr int64_t kBwdWorkspaceAlign = 256;  // bytes; the workspace base is at least this aligned (TMA wants 128)

struct BwdParams {
  // q, k, v, lse, cu_seqlens, strides, sizes, masks, scale and its derived fields, exactly as the forward took
  // them (make_fwd_params). fwd.lse is the forward's lse (read only here); fwd.out is the forward's out, which only
  // the preprocess reads (into delta).
  FwdParams fwd;

  const void* dout;  // like q (same dtype), head_dim contiguous, 16-byte aligned rows
  int64_t do_stride_b, do_stride_s, do_stride_h;
  const float* delta;  // rowsum(dout * out) - dlse, float32, laid out exactly like fwd.lse (fwd.lse_stride_*)

  void* dq;  // like q, contiguous; every element written by the kernel
  void* dk;  // like k, contiguous; every element written (keys no query sees get 0)
  void* dv;  // like v, contiguous; every element written
  int64_t dq_stride_b, dq_stride_s, dq_stride_h;
  int64_t dk_stride_b, dk_stride_s, dk_stride_h;
  int64_t dv_stride_b, dv_stride_s, dv_stride_h;

  // bwd_workspace_bytes(*this) bytes, zero-filled, kBwdWorkspaceAlign-aligned: the vendor's fp32 dQ (and, if it
  // wants them, dK/dV) accumulators and semaphores. nullptr when the vendor asked for none.
  void* workspace;
  // true: bit-identical results across runs with the same inputs (accumulation in a fixed order).
  bool deterministic;

  // Rows of q and k in their sequence dimension: batch * seqlen (dense), total (varlen); what a tensor map over the
  // flat tensors needs (FwdParams has only max_seqlen for varlen). Last, so the fields before keep their offsets.
  int64_t total_q, total_k;
};

// BwdParams for checked arguments (csrc/bwd.cpp checks them): q, k, v, out, lse, cu_seqlens and the options as
// make_fwd_params takes them; dout like q; dq, dk, dv contiguous like q, k, v; delta laid out like lse.
inline BwdParams make_bwd_params(const FwdParams& fwd, const Strided& dout, const float* delta, const Strided& dq,
                                 const Strided& dk, const Strided& dv, bool deterministic) {
  BwdParams p{};
  p.fwd = fwd;
  const bool varlen = fwd.cu_seqlens_q != nullptr;
  const int s = varlen ? 0 : 1;  // dim of the sequence position; heads follow it
  auto strides = [&](const Strided& t, int64_t& stride_b, int64_t& stride_s, int64_t& stride_h) {
    stride_b = varlen ? 0 : t.stride[0];
    stride_s = t.stride[s];
    stride_h = t.stride[s + 1];
  };
  p.dout = dout.data;
  strides(dout, p.do_stride_b, p.do_stride_s, p.do_stride_h);
  p.delta = delta;
  p.dq = const_cast<void*>(dq.data), p.dk = const_cast<void*>(dk.data), p.dv = const_cast<void*>(dv.data);
  strides(dq, p.dq_stride_b, p.dq_stride_s, p.dq_stride_h);
  strides(dk, p.dk_stride_b, p.dk_stride_s, p.dk_stride_h);
  strides(dv, p.dv_stride_b, p.dv_stride_s, p.dv_stride_h);
  p.total_q = varlen ? dq.size[0] : dq.size[0] * dq.size[1];
  p.total_k = varlen ? dk.size[0] : dk.size[0] * dk.size[1];
  p.deterministic = deterministic;
  return p;
}

// Implemented once per vendor that has a backward kernel. bwd_workspace_bytes: how many zero-filled bytes
// launch_bwd needs at params.workspace (0 for none); it reads every field but workspace. launch_bwd: launches the
// main kernel (and any postprocess) on the current stream of the current device and checks the launches. The
// caller has checked every argument, set the device, computed delta and allocated the workspace.
int64_t bwd_workspace_bytes(const BwdParams& params);
void launch_bwd(const BwdParams& params);

}  // namespace flashcore
