// Host side of the attention forward, shared by every vendor that has a forward kernel: check the arguments,
// allocate out and lse, fill FwdParams (make_fwd_params, csrc/fwd_params.h), hand over to the vendor's launch_fwd.
// FLASHCORE_HAS_FWD (fwd_params.h) says which builds have a kernel; the binding registers `fwd` only in those.
#include "fwd_params.h"

#if FLASHCORE_HAS_FWD

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>

#include "attention_args.h"
#include "ops.h"

namespace flashcore {

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q,  // (batch, seqlen_q, heads_q, head_dim) | (total_q, heads_q, head_dim)
                                       const at::Tensor& k,  // (batch, seqlen_k, heads_kv, head_dim) | (total_k, heads_kv, head_dim)
                                       const at::Tensor& v,  // like k
                                       const std::optional<at::Tensor>& cu_seqlens_q,  // (batch + 1,) int32, varlen
                                       const std::optional<at::Tensor>& cu_seqlens_k,  // (batch + 1,) int32, varlen
                                       int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       bool /*deterministic: the forward has no atomics, it always is*/) {
  const AttentionShape s = check_attention_args("flashcore fwd", q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                max_seqlen_k, window_left, window_right, softcap);

  const c10::DeviceGuard device_guard(q.device());
  const at::Tensor qc = kernel_readable(q, s), kc = kernel_readable(k, s), vc = kernel_readable(v, s);
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous: 16-byte aligned rows
  at::Tensor lse = s.varlen ? at::empty({s.heads_q, q.size(0)}, q.options().dtype(at::kFloat))
                            : at::empty({s.batch, s.heads_q, s.max_seqlen_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 || s.batch == 0) return {out, lse};

  const FwdParams p = make_fwd_params(
      strided(qc), strided(kc), strided(vc), strided(out), lse.data_ptr<float>(),
      s.varlen ? cu_seqlens_q->data_ptr<int32_t>() : nullptr, s.varlen ? cu_seqlens_k->data_ptr<int32_t>() : nullptr,
      static_cast<int32_t>(s.batch), static_cast<int32_t>(s.max_seqlen_q), static_cast<int32_t>(s.max_seqlen_k),
      static_cast<float>(softmax_scale), causal, static_cast<int32_t>(window_left),
      static_cast<int32_t>(window_right), static_cast<float>(softcap),
      q.scalar_type() == at::kBFloat16 ? HalfType::kBf16 : HalfType::kFp16);
  launch_fwd(p);
  return {out, lse};
}

}  // namespace flashcore

#endif  // FLASHCORE_HAS_FWD
