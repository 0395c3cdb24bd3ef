"""The reference (flashcore.reference, served through flashcore.attention on CPU) against a float64
naive attention: forward, LSE, gradients, chunking, varlen, memory."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import flashcore
from flashcore import reference

import naive

# float64 inputs: the reference computes in float64 but returns lse in float32, and the backward
# recomputes P from that lse, so 1e-6 relative is its floor.
TOL64 = 1e-6


def _qkv(b, sq, sk, hq, hkv, d, dtype=torch.float64, grad=False):
    q = torch.randn(b, sq, hq, d, dtype=dtype)
    k = torch.randn(b, sk, hkv, d, dtype=dtype)
    v = torch.randn(b, sk, hkv, d, dtype=dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


CASES = [
    # (b, sq, sk, hq, hkv, d, options)
    (2, 37, 37, 4, 4, 16, dict()),
    (1, 64, 100, 6, 2, 32, dict(causal=True)),  # GQA, causal with seqlen_q < seqlen_k
    (2, 100, 40, 4, 1, 24, dict(causal=True)),  # MQA, causal with seqlen_q > seqlen_k: top rows see nothing
    (1, 77, 77, 2, 2, 8, dict(window_size=(9, 4))),
    (2, 33, 70, 4, 2, 16, dict(window_size=(0, 0))),  # a single visible key per row
    (1, 50, 50, 3, 3, 40, dict(window_size=(-1, 5))),
    (1, 50, 90, 2, 1, 16, dict(window_size=(12, -1), causal=True)),
    (2, 45, 45, 4, 2, 64, dict(softcap=3.0)),
    (1, 30, 61, 4, 4, 16, dict(softcap=1.5, causal=True, softmax_scale=0.3)),
    (1, 1, 1, 1, 1, 8, dict()),
    (1, 1, 300, 2, 1, 16, dict(causal=True)),  # decode-like: one query sees every key
]


def _naive_kw(opts):
    return dict(causal=opts.get("causal", False), softmax_scale=opts.get("softmax_scale"),
                window=opts.get("window_size", (-1, -1)), softcap=opts.get("softcap", 0.0))


@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,opts", CASES)
def test_forward_and_lse_match_naive(b, sq, sk, hq, hkv, d, opts):
    q, k, v = _qkv(b, sq, sk, hq, hkv, d)
    out, lse = flashcore.attention(q, k, v, return_lse=True, **opts)
    ref_out, ref_lse = naive.attention(q, k, v, **_naive_kw(opts))
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32
    assert naive.rel_err(out, ref_out) < 1e-12
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "rows with no visible key differ"
    assert naive.rel_err(lse, ref_lse) < 1e-6
    empty_rows = torch.isinf(ref_lse)  # (b, hq, sq)
    assert (out.permute(0, 2, 1, 3)[empty_rows] == 0).all()


@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,opts", CASES)
def test_gradients_match_naive_autograd(b, sq, sk, hq, hkv, d, opts):
    q, k, v = _qkv(b, sq, sk, hq, hkv, d, grad=True)
    out, lse = flashcore.attention(q, k, v, return_lse=True, **opts)
    ref_out, ref_lse = naive.attention(q, k, v, **_naive_kw(opts))
    dout = torch.randn_like(ref_out)
    dlse = torch.randn_like(ref_lse)
    finite = torch.isfinite(ref_lse)
    loss = (out * dout).sum() + (lse.double() * dlse)[finite].sum()
    ref_loss = (ref_out * dout).sum() + (ref_lse * dlse)[finite].sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.shape == r.shape
        assert torch.isfinite(g).all(), f"d{name} has non-finite entries"
        assert naive.rel_err(g, r) < TOL64, f"d{name}"


@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(20, 7), softcap=2.0)])
def test_small_chunks_give_the_same_result(opts):
    """Ragged chunks (not dividing the sequence) exercise tile skipping, partial tiles and the
    online-softmax rescaling; they must reproduce the single-tile result."""
    q, k, v = _qkv(2, 131, 150, 4, 2, 16)
    dout = torch.randn_like(q)
    kw = dict(softmax_scale=0.25, window_left=opts.get("window_size", (-1, -1))[0],
              window_right=0 if opts.get("causal") else opts.get("window_size", (-1, -1))[1],
              softcap=opts.get("softcap", 0.0))
    whole = reference.forward(q, k, v, **kw)
    chunked = reference.forward(q, k, v, q_chunk=17, k_chunk=23, **kw)
    assert naive.rel_err(chunked[0], whole[0]) < 1e-12
    assert naive.rel_err(chunked[1], whole[1]) < 1e-6
    g_whole = reference.backward(dout, q, k, v, whole[0], whole[1], **kw)
    g_chunked = reference.backward(dout, q, k, v, whole[0], whole[1], q_chunk=19, k_chunk=29, **kw)
    for a, b in zip(g_chunked, g_whole):
        assert naive.rel_err(a, b) < 1e-12


def test_tile_skipping_classifies_every_tile_correctly():
    """tile_state is an optimisation: check it against the elementwise mask on many tiles."""
    for sq, sk, left, right in [(100, 100, -1, 0), (40, 130, 10, 3), (130, 40, -1, 0), (64, 64, 0, 0)]:
        mask = reference._Mask(sq, sk, left, right)
        dense = naive.visible(sq, sk, window=(left, right))
        for q0 in range(0, sq, 13):
            for k0 in range(0, sk, 11):
                q1, k1 = min(q0 + 13, sq), min(k0 + 11, sk)
                want = dense[q0:q1, k0:k1]
                state = mask.tile_state(q0, q1, k0, k1)
                assert state == ("empty" if not want.any() else "full" if want.all() else "partial")
                assert torch.equal(mask.tile(q0, q1, k0, k1, torch.device("cpu")), want)


VARLEN_LENGTHS = [([5, 1, 33, 0, 17], [5, 40, 33, 3, 0]),  # ragged, an empty query and an empty key sequence
                  ([64, 100], [64, 100])]


@pytest.mark.parametrize("lens_q,lens_k", VARLEN_LENGTHS)
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window_size=(6, 2), softcap=2.5)])
def test_varlen_matches_naive_per_sequence(lens_q, lens_k, opts):
    hq, hkv, d = 4, 2, 16
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lens_q), hq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(lens_k), hkv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sum(lens_k), hkv, d, dtype=torch.float64, requires_grad=True)
    out, lse = flashcore.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True, **opts)
    ref_out, ref_lse = naive.attention_varlen(q, k, v, cu_q, cu_k, **_naive_kw(opts))
    assert lse.shape == (hq, sum(lens_q))
    assert naive.rel_err(out, ref_out) < 1e-12
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert naive.rel_err(lse, ref_lse) < 1e-6
    dout = torch.randn_like(ref_out)
    grads = torch.autograd.grad((out * dout).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref_out * dout).sum(), (q, k, v))
    for name, g, r in zip("qkv", grads, ref_grads):
        assert naive.rel_err(g, r) < TOL64, f"d{name}"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs_accumulate_in_float32(dtype, tol):
    q, k, v = _qkv(2, 200, 200, 4, 2, 64, dtype=dtype, grad=True)
    out = flashcore.attention(q, k, v, causal=True)
    ref_out, _ = naive.attention(q, k, v, causal=True)
    assert out.dtype == dtype
    assert naive.rel_err(out, ref_out) < tol
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout.double())
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype
        assert naive.rel_err(g, r) < 2 * tol, f"d{name}"


def test_chunk_sizes_bound_the_score_tile_for_long_sequences():
    for b, h, s in [(1, 16, 32768), (8, 32, 4096), (1, 1, 131072), (64, 64, 512)]:
        qc, kc = reference._chunk_sizes(b, h, s, s, 4, None, None)
        assert qc <= s and kc <= s
        assert b * h * qc * kc * 4 <= max(reference.SCORE_TILE_BYTES, b * h * 4 * reference.CHUNK_ALIGN ** 2)


def test_32k_tokens_run_without_a_seqlen_squared_matrix():
    """A (32768, 32768) float32 score matrix alone is 4 GiB; the reference must stay far below."""
    script = textwrap.dedent("""
        import resource, torch, flashcore
        torch.manual_seed(0)
        s = 32768
        q, k, v = (torch.randn(1, s, 1, 8) for _ in range(3))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, lse = flashcore.attention(q, k, v, causal=True, return_lse=True)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        rows = torch.tensor([0, 1, 4095, 20000, s - 1])
        for r in rows.tolist():
            sc = (q[0, r, 0] @ k[0, : r + 1, 0].T) * 8 ** -0.5
            p = torch.softmax(sc.double(), -1)
            assert torch.allclose(out[0, r, 0].double(), p @ v[0, : r + 1, 0].double(), atol=1e-5), r
            assert abs(lse[0, 0, r].item() - torch.logsumexp(sc.double(), -1).item()) < 1e-4, r
        print(grown // 1024)
    """)
    env = dict(os.environ, FLASHCORE_BACKEND="reference")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    grown_mib = int(res.stdout.split()[-1])
    assert grown_mib < 1024, f"peak memory grew by {grown_mib} MiB"


def test_nan_in_inputs_propagates_as_nan():
    q, k, v = _qkv(1, 20, 20, 2, 2, 8, dtype=torch.float32)
    q[0, 3, 1, 2] = float("nan")
    out = flashcore.attention(q, k, v)
    assert torch.isnan(out[0, 3, 1]).all()
    assert not torch.isnan(out[0, 4]).any(), "NaN leaked into other rows"
    k[0, 5, 0, 0] = float("nan")
    out = flashcore.attention(q, k, v, causal=True)
    assert torch.isnan(out[0, 5:, 0]).all()  # every row that sees key 5
    assert not torch.isnan(out[0, :5, 0]).any()
