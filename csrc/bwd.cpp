// Host side of the attention backward, shared by every vendor that has a backward kernel: check the arguments,
// compute delta with the preprocess (bwd_preprocess.cpp), allocate dq/dk/dv and the vendor's workspace, fill
// BwdParams (csrc/bwd_params.h), hand over to the vendor's launch_bwd. FLASHCORE_HAS_BWD (bwd_params.h) says which
// builds have a kernel; the binding registers `bwd` only in those.
#include "bwd_params.h"

#if FLASHCORE_HAS_BWD

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>

#include "attention_args.h"
#include "checks.h"
#include "ops.h"

namespace flashcore {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout,  // like q
    const at::Tensor& q,     // (batch, seqlen_q, heads_q, head_dim) | (total_q, heads_q, head_dim)
    const at::Tensor& k,     // (batch, seqlen_k, heads_kv, head_dim) | (total_k, heads_kv, head_dim)
    const at::Tensor& v,     // like k
    const at::Tensor& out,   // the forward's out, like q
    const at::Tensor& lse,   // the forward's lse: (batch, heads_q, seqlen_q) | (heads_q, total_q) float32
    const std::optional<at::Tensor>& dlse,          // like lse, optional
    const std::optional<at::Tensor>& cu_seqlens_q,  // (batch + 1,) int32, varlen
    const std::optional<at::Tensor>& cu_seqlens_k,  // (batch + 1,) int32, varlen
    int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal, int64_t window_left,
    int64_t window_right, double softcap, bool deterministic) {
  constexpr const char* kOp = "flashcore bwd";
  const AttentionShape s = check_attention_args(kOp, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                max_seqlen_k, window_left, window_right, softcap);
  check_like_q(kOp, dout, "dout", q);
  check_like_q(kOp, out, "out", q);
  const std::vector<int64_t> lse_shape = s.varlen ? std::vector<int64_t>{s.heads_q, q.size(0)}
                                                  : std::vector<int64_t>{s.batch, s.heads_q, s.max_seqlen_q};
  const char* lse_layout = s.varlen ? "(heads_q, total_q)" : "(batch, heads_q, seqlen_q)";
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&lse, "lse"},
                                {dlse.has_value() ? &*dlse : nullptr, "dlse"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->sizes() == at::IntArrayRef(lse_shape), kOp, ": ", name, " has shape ", t->sizes(), "; expected ",
                lse_layout, " = ", at::IntArrayRef(lse_shape));
    TORCH_CHECK(t->scalar_type() == at::kFloat, kOp, ": ", name, " is ", t->scalar_type(), "; expected float32");
    check_same_device(*t, q, kOp, name, "q");
  }

  const c10::DeviceGuard device_guard(q.device());
  const at::Tensor qc = kernel_readable(q, s), kc = kernel_readable(k, s), vc = kernel_readable(v, s);
  const at::Tensor doc = kernel_readable(dout, s), oc = kernel_readable(out, s);
  at::Tensor dq = at::empty(q.sizes(), q.options());  // contiguous: 16-byte aligned rows
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0 || s.batch == 0) {  // no query or no key: every gradient is zero
    return {dq.zero_(), dk.zero_(), dv.zero_()};
  }

  // delta = rowsum(dout * out) - dlse: (batch, heads_q, seqlen_q), or for varlen (1, heads_q, total_q), which is
  // lse's varlen layout (heads_q, total_q) with a unit batch in front.
  const at::Tensor delta = s.varlen ? bwd_preprocess(oc.unsqueeze(0), doc.unsqueeze(0),
                                                     dlse.has_value() ? std::optional<at::Tensor>(dlse->unsqueeze(0))
                                                                      : std::nullopt)
                                    : bwd_preprocess(oc, doc, dlse);
  const at::Tensor lse_c = lse.contiguous();  // make_fwd_params assumes lse's contiguous strides

  const FwdParams f = make_fwd_params(
      strided(qc), strided(kc), strided(vc), strided(oc), const_cast<float*>(lse_c.data_ptr<float>()),
      s.varlen ? cu_seqlens_q->data_ptr<int32_t>() : nullptr, s.varlen ? cu_seqlens_k->data_ptr<int32_t>() : nullptr,
      static_cast<int32_t>(s.batch), static_cast<int32_t>(s.max_seqlen_q), static_cast<int32_t>(s.max_seqlen_k),
      static_cast<float>(softmax_scale), causal, static_cast<int32_t>(window_left),
      static_cast<int32_t>(window_right), static_cast<float>(softcap),
      q.scalar_type() == at::kBFloat16 ? HalfType::kBf16 : HalfType::kFp16);
  BwdParams p = make_bwd_params(f, strided(doc), delta.data_ptr<float>(), strided(dq), strided(dk), strided(dv),
                                deterministic);
  const int64_t workspace_bytes = bwd_workspace_bytes(p);
  at::Tensor workspace;  // kept alive until launch_bwd has enqueued its kernels (the caching allocator is stream-ordered)
  if (workspace_bytes > 0) {
    workspace = at::zeros({workspace_bytes}, q.options().dtype(at::kByte));  // the allocator aligns to 512 bytes
    TORCH_CHECK(reinterpret_cast<std::uintptr_t>(workspace.data_ptr()) % kBwdWorkspaceAlign == 0, kOp,
                ": the workspace is not ", kBwdWorkspaceAlign, "-byte aligned");
    p.workspace = workspace.data_ptr();
  }
  launch_bwd(p);
  return {dq, dk, dv};
}

}  // namespace flashcore

#endif  // FLASHCORE_HAS_BWD
