// Argument checks shared by the attention forward (fwd.cpp) and backward (bwd.cpp) host code, CUDA and HIP alike:
// the q/k/v/cu_seqlens/option checks both ops need, and the tensor views both hand to make_fwd_params.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "fwd_params.h"  // Strided

namespace flashcore {

// The head dims the kernels are instantiated for (one template per dim and dtype keeps the build inside its
// 10-minute budget); flashcore/_backends.py KERNEL_HEAD_DIMS says the same for the Python side.
constexpr int64_t kHeadDims[] = {64, 96, 128, 192, 256};

// Sizes of one checked attention call.
struct AttentionShape {
  bool varlen;
  int64_t batch;                       // sequences: q.size(0), or len(cu_seqlens_q) - 1
  int64_t max_seqlen_q, max_seqlen_k;  // dense: q.size(1), k.size(1); varlen: the caller's bounds
  int64_t heads_q, heads_kv, head_dim;
};

// Checks q, k, v, cu_seqlens_q/k, max_seqlen_*, window_* and softcap as the flashcore::fwd/bwd schemas define them
// (flashcore/_schema.py) and returns their sizes; every failure names `op`, the argument and what was expected.
AttentionShape check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const std::optional<at::Tensor>& cu_seqlens_q,
                                    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                                    int64_t max_seqlen_k, int64_t window_left, int64_t window_right, double softcap);

// Checks that t has q's shape, dtype and device (dout and out of the backward).
void check_like_q(const char* op, const at::Tensor& t, const char* name, const at::Tensor& q);

// t itself when the kernels can read its rows (aligned 16-byte loads, addressable row stride), else a contiguous
// copy: q/k/v views of a packed qkv tensor and the usual layouts are not copied.
at::Tensor kernel_readable(const at::Tensor& t, const AttentionShape& shape);

// Pointer, sizes and strides of t for make_fwd_params / make_bwd_params.
Strided strided(const at::Tensor& t);

}  // namespace flashcore
