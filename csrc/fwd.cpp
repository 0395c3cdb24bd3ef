// Host side of the attention forward, shared by every vendor that has a forward kernel: check the arguments,
// allocate out and lse, fill FwdParams (make_fwd_params, csrc/fwd_params.h), hand over to the vendor's launch_fwd.
// FLASHCORE_HAS_FWD (fwd_params.h) says which builds have a kernel; the binding registers `fwd` only in those.
#include "fwd_params.h"

#if FLASHCORE_HAS_FWD

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <iterator>
#include <tuple>

#include "checks.h"
#include "ops.h"

namespace flashcore {
namespace {

constexpr const char* kOp = "flashcore fwd";
constexpr int64_t kHeadDims[] = {64, 96, 128, 192, 256};  // one kernel instantiation each

void check_qkv_tensor(const at::Tensor& t, const at::Tensor& q, int64_t rank, const char* name, const char* layout) {
  check_rank(t, rank, kOp, name, layout);
  check_on_accelerator(t, kOp, name);
  check_same_device(t, q, kOp, name, "q");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), kOp, ": ", name, " is ", t.scalar_type(), "; expected q's dtype ",
              q.scalar_type());
}

void check_cu_seqlens(const at::Tensor& cu, const at::Tensor& q, const char* name, int64_t batch_plus_one) {
  check_rank(cu, 1, kOp, name, "(batch + 1,)");
  check_same_device(cu, q, kOp, name, "q");
  TORCH_CHECK(cu.scalar_type() == at::kInt, kOp, ": ", name, " is ", cu.scalar_type(), "; expected int32");
  TORCH_CHECK(cu.is_contiguous(), kOp, ": ", name, " must be contiguous");
  TORCH_CHECK(cu.size(0) >= 1 && (batch_plus_one < 0 || cu.size(0) == batch_plus_one), kOp, ": ", name,
              " has shape ", cu.sizes(), "; expected (batch + 1,) like cu_seqlens_q");
}

Strided strided(const at::Tensor& t) {
  Strided s{t.data_ptr(), static_cast<int>(t.dim()), {1, 1, 1, 1}, {1, 1, 1, 1}};
  for (int64_t d = 0; d < t.dim(); ++d) s.size[d] = t.size(d), s.stride[d] = t.stride(d);
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q,  // (batch, seqlen_q, heads_q, head_dim) | (total_q, heads_q, head_dim)
                                       const at::Tensor& k,  // (batch, seqlen_k, heads_kv, head_dim) | (total_k, heads_kv, head_dim)
                                       const at::Tensor& v,  // like k
                                       const std::optional<at::Tensor>& cu_seqlens_q,  // (batch + 1,) int32, varlen
                                       const std::optional<at::Tensor>& cu_seqlens_k,  // (batch + 1,) int32, varlen
                                       int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       bool /*deterministic: the forward has no atomics, it always is*/) {
  const bool varlen = cu_seqlens_q.has_value();
  TORCH_CHECK(varlen == cu_seqlens_k.has_value(), kOp, ": cu_seqlens_q and cu_seqlens_k must be given together");
  const int64_t rank = varlen ? 3 : 4;
  const char* q_layout = varlen ? "(total_q, heads_q, head_dim)" : "(batch, seqlen_q, heads_q, head_dim)";
  const char* kv_layout = varlen ? "(total_k, heads_kv, head_dim)" : "(batch, seqlen_k, heads_kv, head_dim)";
  check_rank(q, rank, kOp, "q", q_layout);
  check_on_accelerator(q, kOp, "q");
  check_half_dtype(q, kOp, "q");
  check_qkv_tensor(k, q, rank, "k", kv_layout);
  check_qkv_tensor(v, q, rank, "v", kv_layout);
  TORCH_CHECK(k.sizes() == v.sizes(), kOp, ": v has shape ", v.sizes(), "; expected k's shape ", k.sizes());

  const int64_t head_dim = q.size(-1), heads_q = q.size(-2), heads_kv = k.size(-2);
  TORCH_CHECK(std::find(std::begin(kHeadDims), std::end(kHeadDims), head_dim) != std::end(kHeadDims), kOp,
              ": head_dim (q.size(-1)) is ", head_dim, "; kernels exist for 64, 96, 128, 192, 256");
  TORCH_CHECK(k.size(-1) == head_dim, kOp, ": k.size(-1) is ", k.size(-1), "; expected q's head_dim ", head_dim);
  TORCH_CHECK(heads_kv > 0 && heads_q % heads_kv == 0, kOp, ": heads_q (", heads_q,
              ") must be a multiple of heads_kv (", heads_kv, ")");
  TORCH_CHECK(window_left >= -1 && window_right >= -1, kOp, ": window sides are ", window_left, ", ", window_right,
              "; expected -1 (unbounded) or >= 0");
  TORCH_CHECK(softcap >= 0.0, kOp, ": softcap is ", softcap, "; expected >= 0");

  int64_t batch;
  if (varlen) {
    check_cu_seqlens(*cu_seqlens_q, q, "cu_seqlens_q", -1);
    check_cu_seqlens(*cu_seqlens_k, q, "cu_seqlens_k", cu_seqlens_q->size(0));
    batch = cu_seqlens_q->size(0) - 1;
    TORCH_CHECK(max_seqlen_k >= 0 && (max_seqlen_q > 0 || q.size(0) == 0), kOp, ": max_seqlen_q is ", max_seqlen_q,
                " and max_seqlen_k ", max_seqlen_k, "; expected the longest sequence lengths (the grid covers "
                "max_seqlen_q rows per sequence)");
  } else {
    TORCH_CHECK(k.size(0) == q.size(0), kOp, ": k has batch ", k.size(0), "; expected q's batch ", q.size(0));
    batch = q.size(0);
    max_seqlen_q = q.size(1);
    max_seqlen_k = k.size(1);
  }
  check_fits_int32(batch, kOp, "batch");
  check_fits_int32(q.size(0), kOp, "q.size(0)");
  check_fits_int32(k.size(0), kOp, "k.size(0)");
  check_fits_int32(max_seqlen_q, kOp, "seqlen_q");
  check_fits_int32(max_seqlen_k, kOp, "seqlen_k");
  check_fits_int32(heads_q, kOp, "heads_q");

  const c10::DeviceGuard device_guard(q.device());
  // Rows the kernel cannot read with aligned 16-byte loads, or whose row stride a tile's buffer resource cannot
  // span (fwd_rows_addressable), are copied once; q/k/v views of a packed qkv tensor and the usual layouts are not.
  const int seq_dim = varlen ? 0 : 1;
  auto usable = [&](const at::Tensor& t) {
    return rows_vectorizable(t) && fwd_rows_addressable(t.size(seq_dim), t.stride(seq_dim), head_dim);
  };
  const at::Tensor qc = usable(q) ? q : q.contiguous();
  const at::Tensor kc = usable(k) ? k : k.contiguous();
  const at::Tensor vc = usable(v) ? v : v.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous: 16-byte aligned rows
  at::Tensor lse = varlen ? at::empty({heads_q, q.size(0)}, q.options().dtype(at::kFloat))
                          : at::empty({batch, heads_q, max_seqlen_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 || batch == 0) return {out, lse};

  const FwdParams p = make_fwd_params(
      strided(qc), strided(kc), strided(vc), strided(out), lse.data_ptr<float>(),
      varlen ? cu_seqlens_q->data_ptr<int32_t>() : nullptr, varlen ? cu_seqlens_k->data_ptr<int32_t>() : nullptr,
      static_cast<int32_t>(batch), static_cast<int32_t>(max_seqlen_q), static_cast<int32_t>(max_seqlen_k),
      static_cast<float>(softmax_scale), causal, static_cast<int32_t>(window_left),
      static_cast<int32_t>(window_right), static_cast<float>(softcap),
      q.scalar_type() == at::kBFloat16 ? HalfType::kBf16 : HalfType::kFp16);
  launch_fwd(p);
  return {out, lse};
}

}  // namespace flashcore

#endif  // FLASHCORE_HAS_FWD
