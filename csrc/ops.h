// Host entry points that csrc/flashcore.cpp registers in the backend kernel library (flashcore_sm90 for CUDA
// builds, flashcore_gfx942 for HIP builds). Each is written once, in a shared .cpp, and reaches the vendor's
// kernel through a launch_* function declared next to its parameter struct.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace flashcore {

// D = rowsum(dout * out) - dlse, accumulated in fp32: the first step of the attention backward.
//   out, dout: (batch, seqlen, heads, head_dim) bf16/fp16, head_dim a multiple of 8 in [8, 256]; varlen callers
//              pass (1, total, heads, head_dim) views
//   dlse:      (batch, heads, seqlen) float32, optional
//   returns D: (batch, heads, seqlen) float32, contiguous
at::Tensor bwd_preprocess(const at::Tensor& out, const at::Tensor& dout, const std::optional<at::Tensor>& dlse);

// Attention forward (csrc/fwd.cpp), the flashcore::fwd schema: out like q, lse (batch, heads_q, seqlen_q) or, varlen,
// (heads_q, total_q) float32. Defined and registered only in builds with a forward kernel (FLASHCORE_HAS_FWD).
std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const std::optional<at::Tensor>& cu_seqlens_q,
                                       const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                       int64_t max_seqlen_k, double softmax_scale, bool causal, int64_t window_left,
                                       int64_t window_right, double softcap, bool deterministic);

// Attention backward (csrc/bwd.cpp), the flashcore::bwd schema: (dq, dk, dv) like (q, k, v). Defined and registered
// only in builds with a backward kernel (FLASHCORE_HAS_BWD, csrc/bwd_params.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& dlse, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
    bool causal, int64_t window_left, int64_t window_right, double softcap, bool deterministic);

#if defined(FLASHCORE_CUDA)
// C = a @ b.T on the sm_90a TMA + wgmma GEMM (csrc/gemm.cpp, csrc/cuda/gemm_sm90.cu): a (M, K), b (N, K) bf16 ->
// (M, N) bf16, fp32 accumulation; K a multiple of 8. A test and benchmark op proving the PTX layer
// (csrc/cuda/ptx/), registered as flashcore_sm90::gemm only: not public API.
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);

// One tile of a wgmma form the attention kernels use (csrc/wgmma_probe.cpp, csrc/cuda/wgmma_probe_kernel.cuh), every
// thread's accumulator registers raw: (128, n/2) fp32. flashcore_sm90 test ops, not public API.
// mn_lbo >= 0: the MN-major operands' descriptors take mn_lbo / mn_sbo / mn_base_offset instead of the kernels'.
at::Tensor wgmma_probe(const at::Tensor& a, const at::Tensor& b, int64_t n, int64_t b_col0, bool trans_a,
                       bool trans_b, bool reg_a, int64_t mn_lbo, int64_t mn_sbo, int64_t mn_base_offset);
std::tuple<at::Tensor, at::Tensor> wgmma_probe_chain(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
#endif

// How this extension was built, as a JSON object:
//   {"vendor": "cuda", "backend": "flashcore_sm90", "archs": ["sm_90a"], "compiler": "nvcc 13.0.88", "torch": "2.14.1"}
std::string build_info();

}  // namespace flashcore
