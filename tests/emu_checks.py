"""Float64 references and comparisons shared by the two CPU models' kernel tests (tests/test_hip_emulated*.py for
gfx942, tests/test_cuda_sm90_emulated.py for sm_90a): the same inputs in 16 bits, flashcore.reference in float64,
and the same bars the GPU tests use."""

from __future__ import annotations

import torch

# max |x - ref| / max |ref|: outputs are rounded to 16 bits; the backward also rounds P and dS to 16 bits before
# their GEMMs, as every FlashAttention backward does
FWD_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
BWD_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
LSE_TOLERANCE = 1e-3  # absolute plus relative: lse is accumulated in fp32


def reference_options(q, softmax_scale, causal, window, softcap) -> dict:
    """flashcore.reference's keyword arguments for a kernel call's (causal makes the right window 0)."""
    return dict(softmax_scale=softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5,
                window_left=window[0], window_right=0 if causal else window[1], softcap=softcap)


def random_qkv(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype):
    """Fresh normal q (b, s_q, h_q, d), k and v (b, s_k, h_kv, d) in `dtype`."""
    q = torch.randn(batch, seqlen_q, heads_q, head_dim).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_kv, head_dim).to(dtype)
    v = torch.randn(batch, seqlen_k, heads_kv, head_dim).to(dtype)
    return q, k, v


def reference_fwd(q, k, v, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0, cu_seqlens_q=None,
                  cu_seqlens_k=None):
    """flashcore.reference on float64 copies of the same 16-bit inputs: (out, lse) in float64."""
    from flashcore import reference

    options = reference_options(q, softmax_scale, causal, window, softcap)
    q64, k64, v64 = q.double(), k.double(), v.double()
    if cu_seqlens_q is None:
        return reference.forward(q64, k64, v64, **options)
    return reference.forward_varlen(q64, k64, v64, cu_seqlens_q, cu_seqlens_k, **options)


def forward_for(q, k, v, **options):
    """out (rounded to q's dtype, as a kernel returns it) and lse (float32) from flashcore.reference."""
    out, lse = reference_fwd(q, k, v, **options)
    return out.to(q.dtype), lse.float()


def reference_bwd(q, k, v, out, lse, dout, dlse, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0,
                  cu_seqlens_q=None, cu_seqlens_k=None):
    """(dq, dk, dv) from flashcore.reference's backward in float64."""
    from flashcore import reference

    options = reference_options(q, softmax_scale, causal, window, softcap)
    args = [t.double() if t is not None else None for t in (dout, q, k, v, out, lse, dlse)]
    if cu_seqlens_q is None:
        return reference.backward(*args, **options)
    return reference.backward_varlen(*args, cu_seqlens_q, cu_seqlens_k, **options)


def assert_fwd_matches(out, lse, ref_out, ref_lse, dtype):
    """Output within FWD_TOLERANCE of max |ref|; no NaN (outputs start as NaN: an unwritten row fails); rows that
    see no key have lse -inf and exactly 0 output; lse within LSE_TOLERANCE."""
    assert not out.isnan().any(), f"{out.isnan().sum().item()} output elements NaN (unwritten rows?)"
    assert not lse.isnan().any(), f"{lse.isnan().sum().item()} lse values NaN (unwritten rows?)"
    empty = ref_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty), "rows with lse = -inf differ from the reference's"
    rows = out[empty.transpose(0, 1) if out.dim() == 3 else empty.transpose(1, 2)]  # lse is (h, s) / (b, h, s)
    assert torch.equal(rows, torch.zeros_like(rows)), "rows that see no key are not 0"
    tolerance = FWD_TOLERANCE[dtype]
    err = (out.double() - ref_out).abs().max().item()
    scale = max(ref_out.abs().max().item(), 1e-6)
    assert err <= tolerance * scale, f"max |out - ref| = {err:.3g}, {err / scale:.3g} of max |ref| (limit {tolerance})"
    seen = ~empty
    lse_err = (lse.double()[seen] - ref_lse[seen]).abs() / (1 + ref_lse[seen].abs())
    assert lse_err.numel() == 0 or lse_err.max().item() <= LSE_TOLERANCE, f"lse error {lse_err.max().item():.3g}"


def assert_grads_match(got, want, dtype, names=("dq", "dk", "dv")):
    """Each gradient within BWD_TOLERANCE of its max |ref|, with no NaN (gradients start as NaN where unwritten)."""
    tolerance = BWD_TOLERANCE[dtype]
    for name, x, ref in zip(names, got, want):
        assert not x.isnan().any(), f"{name}: {x.isnan().sum().item()} elements NaN (unwritten?)"
        err = (x.double() - ref).abs().max().item()
        scale = max(ref.abs().max().item(), 1e-6)
        assert err <= tolerance * scale, \
            f"{name}: max |err| = {err:.3g}, {err / scale:.3g} of max |ref| (limit {tolerance})"
