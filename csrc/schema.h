// The two public operator schemas, verbatim copies of FWD_SCHEMA / BWD_SCHEMA in flashcore/_schema.py.
// tests/test_ops.py asserts the registered schemas equal the Python strings, so an edit here without the
// same edit there (or the reverse) fails CI. The backend kernel libraries (flashcore_sm90, flashcore_gfx942)
// define their fwd/bwd with these same strings, so the router can pass its arguments straight through.
#pragma once

namespace flashcore {

inline constexpr const char* kFwdSchema =
    "fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
    "int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, "
    "int window_left, int window_right, float softcap, bool deterministic) -> (Tensor, Tensor)";

inline constexpr const char* kBwdSchema =
    "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, "
    "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
    "float softmax_scale, bool causal, int window_left, int window_right, float softcap, "
    "bool deterministic) -> (Tensor, Tensor, Tensor)";

}  // namespace flashcore
