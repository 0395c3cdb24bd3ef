"""The two operator schemas, in one place.

The C++ binding (csrc/flashcore.cpp) defines the same strings when the extension is built; a test
(tests/test_ops.py) asserts the registered schemas equal these, so the two cannot drift.

Conventions shared by every backend:
- dense: q (batch, seqlen_q, heads_q, head_dim), k/v (batch, seqlen_k, heads_kv, head_dim),
  out like q, lse (batch, heads_q, seqlen_q) float32.
- varlen (cu_seqlens_q given): q (total_q, heads_q, head_dim), k/v (total_k, heads_kv, head_dim),
  out like q, lse (heads_q, total_q) float32.
- window_left/window_right are already normalised by the Python API: -1 = unbounded; causal
  implies window_right == 0. Masks are aligned to the bottom-right corner (key j is visible from
  query i when i + seqlen_k - seqlen_q - window_left <= j <= i + seqlen_k - seqlen_q + window_right).
- rows that see no key get out = 0 and lse = -inf.
- dlse (optional) is the gradient flowing into lse when the caller asked for it.
"""

NAMESPACE = "flashcore"

FWD_SCHEMA = (
    "fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
    "int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, "
    "int window_left, int window_right, float softcap, bool deterministic) -> (Tensor, Tensor)"
)

BWD_SCHEMA = (
    "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, "
    "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
    "float softmax_scale, bool causal, int window_left, int window_right, float softcap, "
    "bool deterministic) -> (Tensor, Tensor, Tensor)"
)
