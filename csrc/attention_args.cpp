// Argument checks shared by the attention forward and backward host code (see attention_args.h).
#include "attention_args.h"

#include <algorithm>
#include <iterator>

#include "checks.h"

namespace flashcore {
namespace {

void check_qkv_tensor(const char* op, const at::Tensor& t, const at::Tensor& q, int64_t rank, const char* name,
                      const char* layout) {
  check_rank(t, rank, op, name, layout);
  check_on_accelerator(t, op, name);
  check_same_device(t, q, op, name, "q");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " is ", t.scalar_type(), "; expected q's dtype ",
              q.scalar_type());
}

void check_cu_seqlens(const char* op, const at::Tensor& cu, const at::Tensor& q, const char* name,
                      int64_t batch_plus_one) {
  check_rank(cu, 1, op, name, "(batch + 1,)");
  check_same_device(cu, q, op, name, "q");
  TORCH_CHECK(cu.scalar_type() == at::kInt, op, ": ", name, " is ", cu.scalar_type(), "; expected int32");
  TORCH_CHECK(cu.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(cu.size(0) >= 1 && (batch_plus_one < 0 || cu.size(0) == batch_plus_one), op, ": ", name,
              " has shape ", cu.sizes(), "; expected (batch + 1,) like cu_seqlens_q");
}

}  // namespace

AttentionShape check_attention_args(const char* op, const at::Tensor& q,  // (b, sq, hq, d) | (total_q, hq, d)
                                    const at::Tensor& k,  // (b, sk, hkv, d) | (total_k, hkv, d)
                                    const at::Tensor& v,  // like k
                                    const std::optional<at::Tensor>& cu_seqlens_q,  // (b + 1,) int32, varlen
                                    const std::optional<at::Tensor>& cu_seqlens_k,  // (b + 1,) int32, varlen
                                    int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
                                    int64_t window_right, double softcap) {
  AttentionShape s{};
  s.varlen = cu_seqlens_q.has_value();
  TORCH_CHECK(s.varlen == cu_seqlens_k.has_value(), op, ": cu_seqlens_q and cu_seqlens_k must be given together");
  const int64_t rank = s.varlen ? 3 : 4;
  const char* q_layout = s.varlen ? "(total_q, heads_q, head_dim)" : "(batch, seqlen_q, heads_q, head_dim)";
  const char* kv_layout = s.varlen ? "(total_k, heads_kv, head_dim)" : "(batch, seqlen_k, heads_kv, head_dim)";
  check_rank(q, rank, op, "q", q_layout);
  check_on_accelerator(q, op, "q");
  check_half_dtype(q, op, "q");
  check_qkv_tensor(op, k, q, rank, "k", kv_layout);
  check_qkv_tensor(op, v, q, rank, "v", kv_layout);
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": v has shape ", v.sizes(), "; expected k's shape ", k.sizes());

  s.head_dim = q.size(-1), s.heads_q = q.size(-2), s.heads_kv = k.size(-2);
  TORCH_CHECK(std::find(std::begin(kHeadDims), std::end(kHeadDims), s.head_dim) != std::end(kHeadDims), op,
              ": head_dim (q.size(-1)) is ", s.head_dim, "; kernels exist for head_dim in ",
              at::IntArrayRef(kHeadDims));
  TORCH_CHECK(k.size(-1) == s.head_dim, op, ": k.size(-1) is ", k.size(-1), "; expected q's head_dim ", s.head_dim);
  TORCH_CHECK(s.heads_kv > 0 && s.heads_q % s.heads_kv == 0, op, ": heads_q (", s.heads_q,
              ") must be a multiple of heads_kv (", s.heads_kv, ")");
  TORCH_CHECK(window_left >= -1 && window_right >= -1, op, ": window sides are ", window_left, ", ", window_right,
              "; expected -1 (unbounded) or >= 0");
  TORCH_CHECK(softcap >= 0.0, op, ": softcap is ", softcap, "; expected >= 0");

  if (s.varlen) {
    check_cu_seqlens(op, *cu_seqlens_q, q, "cu_seqlens_q", -1);
    check_cu_seqlens(op, *cu_seqlens_k, q, "cu_seqlens_k", cu_seqlens_q->size(0));
    s.batch = cu_seqlens_q->size(0) - 1;
    TORCH_CHECK(max_seqlen_k >= 0 && (max_seqlen_q > 0 || q.size(0) == 0), op, ": max_seqlen_q is ", max_seqlen_q,
                " and max_seqlen_k ", max_seqlen_k, "; expected the longest sequence lengths (the grid covers "
                "max_seqlen_q rows per sequence)");
    s.max_seqlen_q = max_seqlen_q, s.max_seqlen_k = max_seqlen_k;
  } else {
    TORCH_CHECK(k.size(0) == q.size(0), op, ": k has batch ", k.size(0), "; expected q's batch ", q.size(0));
    s.batch = q.size(0);
    s.max_seqlen_q = q.size(1), s.max_seqlen_k = k.size(1);
  }
  check_fits_int32(s.batch, op, "batch");
  check_fits_int32(q.size(0), op, "q.size(0)");
  check_fits_int32(k.size(0), op, "k.size(0)");
  check_fits_int32(s.max_seqlen_q, op, "seqlen_q");
  check_fits_int32(s.max_seqlen_k, op, "seqlen_k");
  check_fits_int32(s.heads_q, op, "heads_q");
  return s;
}

void check_like_q(const char* op, const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.sizes() == q.sizes(), op, ": ", name, " has shape ", t.sizes(), "; expected q's shape ", q.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " is ", t.scalar_type(), "; expected q's dtype ",
              q.scalar_type());
  check_same_device(t, q, op, name, "q");
}

at::Tensor kernel_readable(const at::Tensor& t, const AttentionShape& shape) {
  const int seq_dim = shape.varlen ? 0 : 1;
  const bool usable =
      rows_vectorizable(t) && fwd_rows_addressable(t.size(seq_dim), t.stride(seq_dim), shape.head_dim);
  return usable ? t : t.contiguous();
}

Strided strided(const at::Tensor& t) {
  Strided s{t.data_ptr(), static_cast<int>(t.dim()), {1, 1, 1, 1}, {1, 1, 1, 1}};
  for (int64_t d = 0; d < t.dim(); ++d) s.size[d] = t.size(d), s.stride[d] = t.stride(d);
  return s;
}

}  // namespace flashcore
