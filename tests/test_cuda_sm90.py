"""GPU tests of the sm_90a kernels against float64 torch computations. Need an sm_90 GPU (H100/H200) and the
CUDA build of the extension; skipped with the reason otherwise.

The kernels are reached through torch.ops.flashcore_sm90.*, loaded from the built library directly, so these
tests do not depend on the Python package's routing.
"""

from __future__ import annotations

import re

import pytest
import torch

import naive
from test_build_checks import find_extension
from wgmma_isa import (CHAIN_PAIRS, PROBE_FORMS, WGMMA_NS, check_probe_result, probe_operands, random_16bit,
                       regs_to_matrix)


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    capability = torch.cuda.get_device_capability()
    if capability != (9, 0):
        name = torch.cuda.get_device_name()
        return f"{name} is sm_{capability[0]}{capability[1]}; these kernels are sm_90a (H100/H200) only"
    path = find_extension()
    if path is None:
        return "extension flashcore._C not built: run `bash scripts/install.sh`"
    torch.ops.load_library(str(path))
    if not hasattr(torch.ops.flashcore_sm90, "bwd_preprocess"):
        return f"{path} is not a CUDA build (no flashcore_sm90 ops)"
    return None


SKIP_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

DTYPES = [torch.bfloat16, torch.float16]


# ---------------------------------------------------------------------------------------------- wgmma probes
# First in this file, and first in scripts/gpu_tests.py's order: one tile of each wgmma form the attention kernels
# use (csrc/cuda/wgmma_probe_kernel.cuh, the same kernels tests/test_cuda_emu_ptx.py runs on the CPU model), every
# thread's registers read through the ISA's fragment figure (tests/wgmma_isa.py). When an attention test fails,
# these say whether a descriptor form (K-major slices, MN-major pieces inside or across panels), the register-A
# layout or the accumulator layout is wrong on the hardware, or the fault lies in the protocol around them.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", list(PROBE_FORMS))
@pytest.mark.parametrize("n", WGMMA_NS)
def test_wgmma_probe_form(n, form, dtype):
    a, b, a_logical, b_logical, _, _, col0 = probe_operands(n, form, dtype, None)
    trans_a, trans_b, reg_a = PROBE_FORMS[form]
    regs = torch.ops.flashcore_sm90.wgmma_probe(a.cuda(), b.cuda(), n, col0, bool(trans_a), bool(trans_b),
                                                bool(reg_a))
    torch.cuda.synchronize()
    assert regs.shape == (128, n // 2) and regs.dtype == torch.float32
    check_probe_result(regs_to_matrix(regs, n), a_logical, b_logical, f"{form} N={n} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ns, d", CHAIN_PAIRS)
def test_wgmma_probe_forward_chain(ns, d, dtype):
    """The forward consumer's pair: S = Q K^T (SS), P = 16-bit S packed in registers (a_frag_from_acc), O = P V
    (RS, V MN-major across head-dim panels, LBO = ns rows)."""
    q, k, v = (random_16bit(shape, dtype, None) for shape in ((64, d), (ns, d), (ns, d)))
    s_regs, o_regs = torch.ops.flashcore_sm90.wgmma_probe_chain(q.cuda(), k.cuda(), v.cuda())
    torch.cuda.synchronize()
    s = regs_to_matrix(s_regs, ns)
    check_probe_result(s, q, k.T, f"S = Q K^T, ns={ns} d={d}")
    p = s.to(dtype)  # what the kernel packs: round to nearest even
    check_probe_result(regs_to_matrix(o_regs, d), p, v, f"O = P V, ns={ns} d={d}")


@pytest.mark.parametrize("make, message", [
    (lambda: ((64, 16), (48, 16), 48, 0, False, False, False), "no probe for n = 48"),
    (lambda: ((64, 24), (64, 24), 64, 0, False, False, False), "k = 24: expected a multiple of 16"),
    (lambda: ((64, 64), (64, 128), 32, 48, False, True, False), "a piece that starts inside a 64-column panel"),
    (lambda: ((64, 64), (64, 64), 64, 0, True, False, False), "no probe for n = 64, trans (a, b) = (1, 0)"),
    (lambda: ((32, 64), (64, 64), 64, 0, False, False, False), "expected (64, k)"),
])
def test_wgmma_probe_rejects_bad_arguments(make, message):
    a_shape, b_shape, n, col0, trans_a, trans_b, reg_a = make()
    a = torch.randn(a_shape, device="cuda").to(torch.bfloat16)
    b = torch.randn(b_shape, device="cuda").to(torch.bfloat16)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.ops.flashcore_sm90.wgmma_probe(a, b, n, col0, trans_a, trans_b, reg_a)
    with pytest.raises(RuntimeError, match="b must be on a GPU"):
        torch.ops.flashcore_sm90.wgmma_probe(a, b.cpu(), n, col0, trans_a, trans_b, reg_a)


# ---------------------------------------------------------------------------------------------- bwd_preprocess

def bwd_preprocess_reference(out, dout, dlse=None):
    """D = rowsum(dout * out) - dlse in float64, (batch, heads, seqlen); also sum |dout * out| for the tolerance."""
    prod = dout.double() * out.double()
    d = prod.sum(-1).transpose(1, 2)
    scale = prod.abs().sum(-1).transpose(1, 2)
    if dlse is not None:
        d = d - dlse.double()
        scale = scale + dlse.double().abs()
    return d, scale


def check_bwd_preprocess(out, dout, dlse=None):
    d = torch.ops.flashcore_sm90.bwd_preprocess(out, dout, dlse)
    batch, seqlen, heads, _ = out.shape
    assert d.shape == (batch, heads, seqlen) and d.dtype == torch.float32 and d.is_contiguous()
    ref, scale = bwd_preprocess_reference(out, dout, dlse)
    # The product of two fp16/bf16 values is exact in fp32; what remains is the fp32 rounding of a sum of at most
    # 256 products and dlse: |error| <= 257 * 2^-24 * sum |terms| = 1.53e-5 * sum |terms| (+1e-30 for all-zero rows).
    err = (d.double() - ref).abs()
    bound = 2e-5 * scale + 1e-30
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"max error / bound = {worst:.3g} (max abs error {err.max().item():.3g})"
    return d


def rand(shape, dtype):
    return torch.randn(shape, device="cuda", dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", [1, 17, 1000])
@pytest.mark.parametrize("head_dim", [8, 64, 72, 128, 200, 256])
@pytest.mark.parametrize("with_dlse", [False, True])
def test_bwd_preprocess_dense(dtype, seqlen, head_dim, with_dlse):
    batch, heads = 2, 3
    out, dout = rand((batch, seqlen, heads, head_dim), dtype), rand((batch, seqlen, heads, head_dim), dtype)
    dlse = torch.randn(batch, heads, seqlen, device="cuda") if with_dlse else None
    check_bwd_preprocess(out, dout, dlse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_bwd_preprocess_varlen_view(dtype, head_dim):
    """Varlen callers pass (1, total, heads, head_dim) views of (total, heads, head_dim); ragged lengths 1, 17, 1000."""
    total, heads = 1 + 17 + 1000, 4
    out, dout = rand((total, heads, head_dim), dtype), rand((total, heads, head_dim), dtype)
    dlse = torch.randn(heads, total, device="cuda")
    d = check_bwd_preprocess(out.unsqueeze(0), dout.unsqueeze(0), dlse.unsqueeze(0))
    assert d.shape == (1, heads, total)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bwd_preprocess_strided_views(dtype, head_dim):
    """q-like views out of a packed qkv tensor, a head_dim slice of a wider row, a strided dlse: no copies needed."""
    batch, seqlen, heads = 2, 333, 5
    qkv = rand((batch, seqlen, 3, heads, head_dim), dtype)
    out = qkv[:, :, 1]  # strides (seqlen*3*heads*d, 3*heads*d, d, 1)
    wide = rand((batch, seqlen, heads, head_dim + 64), dtype)
    dout = wide[..., 64:]  # row stride head_dim + 64, starts 128 bytes in
    dlse = torch.randn(batch, seqlen, heads, device="cuda").transpose(1, 2)  # (batch, heads, seqlen), not contiguous
    check_bwd_preprocess(out, dout, dlse)
    check_bwd_preprocess(out.transpose(0, 1).contiguous().transpose(0, 1), dout)  # batch stride < seqlen stride


@pytest.mark.parametrize("dtype", DTYPES)
def test_bwd_preprocess_unaligned_and_expanded_inputs(dtype):
    """Rows that cannot be read with aligned 16-byte loads are copied first; the answer must not change."""
    batch, seqlen, heads, head_dim = 2, 50, 3, 64
    base = rand((batch, seqlen, heads, head_dim + 8), dtype)
    out = base[..., 1:head_dim + 1]  # starts 2 bytes into the row: not 16-byte aligned
    dout = rand((1, 1, 1, head_dim), dtype).expand(batch, seqlen, heads, head_dim)  # stride 0 everywhere but the last
    check_bwd_preprocess(out, dout)
    ones = torch.ones(head_dim, device="cuda", dtype=dtype).expand(batch, seqlen, heads, head_dim)  # stride-0 last dim
    check_bwd_preprocess(out, ones)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bwd_preprocess_large(dtype):
    """Many blocks (batch * heads * seqlen / 32 = 8192) and the common head_dim."""
    out, dout = rand((4, 4096, 16, 128), dtype), rand((4, 4096, 16, 128), dtype)
    check_bwd_preprocess(out, dout, torch.randn(4, 16, 4096, device="cuda"))


def test_bwd_preprocess_runs_on_the_current_stream():
    out, dout = rand((2, 700, 4, 128), torch.bfloat16), rand((2, 700, 4, 128), torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        d = torch.ops.flashcore_sm90.bwd_preprocess(out, dout, None)
    torch.cuda.current_stream().wait_stream(side)
    ref, _ = bwd_preprocess_reference(out, dout)
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-4)


def test_bwd_preprocess_empty():
    out = torch.empty(2, 0, 3, 64, device="cuda", dtype=torch.bfloat16)
    d = torch.ops.flashcore_sm90.bwd_preprocess(out, out, None)
    assert d.shape == (2, 3, 0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (rand((1, 4, 2, 12), torch.bfloat16), rand((1, 4, 2, 12), torch.bfloat16), None), "head_dim"),
        (lambda: (rand((1, 4, 2, 264), torch.bfloat16), rand((1, 4, 2, 264), torch.bfloat16), None), "head_dim"),
        (lambda: (rand((1, 4, 2, 64), torch.float32), rand((1, 4, 2, 64), torch.float32), None), "out must be"),
        (lambda: (rand((1, 4, 2, 64), torch.bfloat16), rand((1, 4, 2, 64), torch.float16), None), "dout is"),
        (lambda: (rand((1, 4, 2, 64), torch.bfloat16), rand((1, 4, 3, 64), torch.bfloat16), None), "dout has shape"),
        (lambda: (rand((4, 2, 64), torch.bfloat16), rand((4, 2, 64), torch.bfloat16), None), "out must be"),
        (lambda: (rand((1, 4, 2, 64), torch.bfloat16), rand((1, 4, 2, 64), torch.bfloat16),
                  torch.zeros(1, 4, 2, device="cuda")), "dlse has shape"),
        (lambda: (rand((1, 4, 2, 64), torch.bfloat16), rand((1, 4, 2, 64), torch.bfloat16),
                  torch.zeros(1, 2, 4, device="cuda", dtype=torch.float64)), "dlse is"),
    ],
    ids=["head_dim_12", "head_dim_264", "float32", "mixed_dtypes", "shape_mismatch", "rank_3", "dlse_shape",
         "dlse_dtype"],
)
def test_bwd_preprocess_rejects_bad_arguments(make, message):
    out, dout, dlse = make()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.flashcore_sm90.bwd_preprocess(out, dout, dlse)


# ---------------------------------------------------------------------------------------------- gemm (PTX layer proof)
# flashcore_sm90::gemm(a, b) = a @ b.T on the warp-specialized TMA + wgmma kernel (csrc/cuda/gemm_sm90.cu):
# a (M, K), b (N, K) bf16 -> (M, N) bf16 with fp32 accumulation. Tile 128 x 256 x 64, persistent grid.

def gemm_reference(a, b):
    """a @ b.T in float32 through torch.matmul with TF32 off (the exact products of bf16 values, fp32 sums)."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return torch.matmul(a.float(), b.float().t())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def check_gemm(a, b):
    if not hasattr(torch.ops.flashcore_sm90, "gemm"):
        pytest.skip("this build of flashcore._C has no flashcore_sm90::gemm")
    c = torch.ops.flashcore_sm90.gemm(a, b)
    m, n = a.shape[0], b.shape[0]
    assert c.shape == (m, n) and c.dtype == torch.bfloat16 and c.is_contiguous()
    ref = gemm_reference(a, b)
    if ref.numel() == 0:
        return c
    err = (c.float() - ref).abs()
    # The criterion: relative (Frobenius) error <= 1e-2. bf16 output rounding alone is ~2^-9 ~ 2e-3.
    rel = (err.norm() / ref.norm().clamp_min(1e-30)).item()
    assert rel <= 1e-2, f"relative error {rel:.3g} for M, N, K = {m}, {n}, {a.shape[1]}"
    # Per element too, so one wrong tile row/column cannot hide in the norm: within 1e-2 of |ref| + rms(ref).
    rms = ref.pow(2).mean().sqrt()
    bad = err > 1e-2 * (ref.abs() + rms)
    assert not bad.any(), (f"{bad.sum().item()} elements off, first at {bad.nonzero()[0].tolist()}: "
                           f"{c.float()[tuple(bad.nonzero()[0])].item()} vs {ref[tuple(bad.nonzero()[0])].item()}")
    return c


GEMM_SHAPES = [
    (1, 1, 8),  # smallest legal: one tile, almost all of it zero-filled / clipped
    (127, 257, 72),  # ragged M and N (N padded for the store), K = one full and one partial K step
    (128, 256, 64),  # exactly one tile, one K step
    (129, 255, 8),  # one row into the second tile-row, K < one K step
    (1000, 1000, 1000),  # ragged everything, K tail of 40
    (300, 520, 136),  # 3 tile-columns (the last 8 wide)
    (1, 4096, 512),  # a single row against many tiles
    (4096, 8, 256),  # a single, almost empty, tile-column
    (2048, 8192, 128),  # 512 tiles: each CTA runs ~4 tiles; ring phases carry across tiles
    (4096, 4096, 4096),
]


@pytest.mark.parametrize("m, n, k", GEMM_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_SHAPES])
def test_gemm_matches_torch_matmul(m, n, k):
    check_gemm(rand((m, k), torch.bfloat16), rand((n, k), torch.bfloat16))


def test_gemm_structured_inputs_place_every_element():
    """Integer-valued inputs whose products and sums are exact in fp32 and bf16: the result must be exact, so any
    row, column or K slice landing in the wrong place shows up (random data can hide a permutation in the norm)."""
    m, n, k = 300, 520, 200
    a = torch.randint(-1, 2, (m, k), device="cuda").to(torch.bfloat16)
    b = torch.randint(-1, 2, (n, k), device="cuda").to(torch.bfloat16)
    c = check_gemm(a, b)
    # |c| <= K = 200 < 2^8: every integer in range is a bf16 value, so rounding the fp32 sum loses nothing.
    torch.testing.assert_close(c.float(), gemm_reference(a, b), rtol=0, atol=0)


def test_gemm_identity_picks_columns():
    """a @ I.T = a exactly, for a ragged shape: each output element comes from the one K index it should."""
    m, k = 333, 264
    a = rand((m, k), torch.bfloat16)
    eye = torch.eye(k, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(check_gemm(a, eye), a, rtol=0, atol=0)


def test_gemm_strided_and_transposed_inputs():
    """Row-strided views are read in place (lda, ldb != K); transposed and unaligned views are copied first."""
    m, n, k = 257, 300, 128
    wide_a = rand((m, k + 64), torch.bfloat16)
    wide_b = rand((n, k + 8), torch.bfloat16)
    check_gemm(wide_a[:, 64:], wide_b[:, :k])  # row strides k + 64 and k + 8: multiples of 8, no copy
    check_gemm(rand((k, m), torch.bfloat16).t(), rand((k, n), torch.bfloat16).t())  # K-stride != 1: copied
    check_gemm(wide_a[:, 1:k + 1], wide_b[:, :k])  # base 2 bytes into a row: not 16-byte aligned, copied


def test_gemm_empty_and_zero_k():
    a, b = rand((0, 64), torch.bfloat16), rand((5, 64), torch.bfloat16)
    assert torch.ops.flashcore_sm90.gemm(a, b).shape == (0, 5)
    c = torch.ops.flashcore_sm90.gemm(rand((3, 0), torch.bfloat16), rand((5, 0), torch.bfloat16))
    assert c.shape == (3, 5) and not c.any()


def test_gemm_runs_on_the_current_stream():
    a, b = rand((1024, 512), torch.bfloat16), rand((768, 512), torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        c = torch.ops.flashcore_sm90.gemm(a, b)
    torch.cuda.current_stream().wait_stream(side)
    ref = gemm_reference(a, b)
    assert ((c.float() - ref).norm() / ref.norm()).item() <= 1e-2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (rand((4, 12), torch.bfloat16), rand((4, 12), torch.bfloat16)), r"a\.size\(1\) \(K\) is 12"),
        (lambda: (rand((4, 16), torch.float16), rand((4, 16), torch.float16)), "a must be bfloat16"),
        (lambda: (rand((4, 16), torch.bfloat16), rand((4, 16), torch.float32)), "b must be bfloat16"),
        (lambda: (rand((4, 16), torch.bfloat16), rand((4, 24), torch.bfloat16)), "same K"),
        (lambda: (rand((2, 4, 16), torch.bfloat16), rand((4, 16), torch.bfloat16)), r"a must be \(M, K\)"),
    ],
    ids=["k_not_multiple_of_8", "fp16", "b_fp32", "k_mismatch", "rank_3"],
)
def test_gemm_rejects_bad_arguments(make, message):
    a, b = make()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.flashcore_sm90.gemm(a, b)


# ---------------------------------------------------------------------------------------------- attention backward
# torch.ops.flashcore_sm90.bwd (csrc/cuda/bwd_sm90*.cu) against float64 autograd of tests/naive.py over the full
# matrix. The forward's out and lse come from the float64 naive forward (out rounded to the input dtype, as a
# forward kernel would return it), so these tests need no CUDA forward kernel. Tolerance (issue 5): max |x - ref| /
# max |ref| <= 2e-2 for bf16 (1e-2 fp16), for dq, dk and dv.

BWD_TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}
BWD_HEAD_DIMS = [64, 96, 128, 192, 256]


def _has_bwd() -> bool:
    return SKIP_REASON is None and hasattr(torch.ops.flashcore_sm90, "bwd")


def bwd_case(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, scale=None, with_dlse=False,
             deterministic=False, cu=None):
    """Run the kernel's backward and the float64 reference on the same forward; return (got, ref) dicts."""
    if not _has_bwd():
        pytest.skip("this build has no flashcore_sm90.bwd")
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    if cu is None:
        out64, lse64 = naive.attention(*leaves, causal=causal, softmax_scale=scale, window=window, softcap=softcap)
    else:
        out64, lse64 = naive.attention_varlen(*leaves, cu[0], cu[1], causal=causal, softmax_scale=scale,
                                              window=window, softcap=softcap)
    dout = torch.randn_like(out64).to(q.dtype)
    dlse = torch.randn_like(lse64).float() if with_dlse else None
    loss = (out64 * dout.double()).sum()
    if with_dlse:
        finite = torch.isfinite(lse64)
        loss = loss + (torch.where(finite, lse64, 0.0) * dlse.double()).sum()
    ref = dict(zip(("dq", "dk", "dv"), torch.autograd.grad(loss, leaves)))
    left, right = window
    max_q = int((cu[0][1:] - cu[0][:-1]).max()) if cu is not None else q.shape[1]
    max_k = int((cu[1][1:] - cu[1][:-1]).max()) if cu is not None else k.shape[1]
    dq, dk, dv = torch.ops.flashcore_sm90.bwd(
        dout, q, k, v, out64.detach().to(q.dtype), lse64.detach().float(), dlse, cu[0] if cu is not None else None,
        cu[1] if cu is not None else None, max_q, max_k, scale, causal, left, right if not causal else 0, softcap,
        deterministic)
    return {"dq": dq, "dk": dk, "dv": dv}, ref


def check_bwd(got, ref, dtype, what=""):
    for name in ("dq", "dk", "dv"):
        assert got[name].dtype == dtype and got[name].shape == ref[name].shape, name
        assert torch.isfinite(got[name]).all(), f"{what} {name} has NaN/inf"
        if ref[name].abs().max() == 0:
            assert not got[name].any(), f"{what} {name} should be all zero"
            continue
        err = naive.rel_err(got[name], ref[name])
        assert err <= BWD_TOL[dtype], f"{what} {name}: max error / max |ref| = {err:.3g} > {BWD_TOL[dtype]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
@pytest.mark.parametrize("mask", ["none", "causal", "window"])
@pytest.mark.parametrize("seqlens", [(1, 1), (17, 300), (300, 17), (513, 513), (1000, 1777)])
def test_bwd_dense(dtype, head_dim, mask, seqlens):
    """Every head dim x mask x ragged lengths (not tile multiples; seqlen_q > seqlen_k leaves rows with lse = -inf
    under causal; window (33, 7) visits and masks only band-edge tiles)."""
    sq, sk = seqlens
    q, k, v = rand((2, sq, 4, head_dim), dtype), rand((2, sk, 4, head_dim), dtype), rand((2, sk, 4, head_dim), dtype)
    kw = {"causal": mask == "causal", "window": (33, 7) if mask == "window" else (-1, -1)}
    got, ref = bwd_case(q, k, v, **kw)
    check_bwd(got, ref, dtype, f"D={head_dim} {mask} {seqlens}")


@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
@pytest.mark.parametrize("heads", [(6, 2), (8, 1)], ids=["gqa", "mqa"])
def test_bwd_gqa_mqa(head_dim, heads):
    """dK / dV sum over the group's query heads without expanded K / V (the CTA walks the group's heads)."""
    hq, hkv = heads
    q = rand((2, 333, hq, head_dim), torch.bfloat16)
    k, v = rand((2, 400, hkv, head_dim), torch.bfloat16), rand((2, 400, hkv, head_dim), torch.bfloat16)
    got, ref = bwd_case(q, k, v, causal=True)
    check_bwd(got, ref, torch.bfloat16, f"D={head_dim} heads {heads}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_bwd_softcap_and_dlse(dtype, head_dim, causal):
    """The softcap derivative (tanh recovered from P in the kernel) and dlse (return_lse=True training) together."""
    q, k, v = (rand((1, 400, 3, head_dim), dtype) * 2 for _ in range(3))
    got, ref = bwd_case(q, k, v, causal=causal, softcap=5.0, with_dlse=True)
    check_bwd(got, ref, dtype, "softcap")
    got, ref = bwd_case(q, k, v, causal=causal, with_dlse=True, scale=-0.07)  # negative scale: signed score_mul
    check_bwd(got, ref, dtype, "negative scale")


@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_bwd_varlen(head_dim, causal, deterministic):
    """Packed sequences of lengths 0, 1, 17, 130, 513 (and different key lengths): tiles end mid-sequence, the next
    sequence's rows must not leak in, keys of empty sequences get zeros; the deterministic semaphores are indexed
    per (sequence, head, tile) with the tile count of max_seqlen_q."""
    lq, lk = [0, 1, 17, 130, 513, 64], [5, 1, 300, 0, 513, 64]
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), device="cuda", dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), device="cuda", dtype=torch.int32)
    q = rand((sum(lq), 4, head_dim), torch.bfloat16)
    k, v = rand((sum(lk), 2, head_dim), torch.bfloat16), rand((sum(lk), 2, head_dim), torch.bfloat16)
    got, ref = bwd_case(q, k, v, causal=causal, cu=(cu_q, cu_k), with_dlse=True, deterministic=deterministic)
    check_bwd(got, ref, torch.bfloat16, f"varlen D={head_dim}")


@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("where", ["kv", "q_do"])
def test_bwd_varlen_non_finite_neighbour(head_dim, causal, where):
    """Non-finite values in one packed sequence (rows 70..119) stay out of its neighbours' gradients: "kv" an inf
    in V and a NaN in K, "q_do" an inf in Q and in dO, in one column of every row. The previous sequence's key
    block and last query tile load those rows (masked), and the kernel zeroes the K / V rows past seqlen_k and the
    Q / dO rows (and delta) past seqlen_q before the tensor cores multiply them (0 x inf = NaN)."""
    if not _has_bwd():
        pytest.skip("this build has no flashcore_sm90.bwd")
    lens = [70, 50, 1000, 90]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device="cuda", dtype=torch.int32)
    q, k, v, dout = (rand((sum(lens), 2, head_dim), torch.bfloat16) for _ in range(4))
    if where == "kv":  # every row of sequence 1: each consumer zeroes some of them
        v[70:120, 0, 5] = float("inf")
        k[70:120, 0, 3] = float("nan")
    else:
        q[70:120, 0, 7] = float("inf")
        dout[70:120, 1, 2] = float("inf")
    scale = head_dim ** -0.5
    out64, lse64 = naive.attention_varlen(q, k, v, cu, cu, causal=causal, softmax_scale=scale)
    dq, dk, dv = torch.ops.flashcore_sm90.bwd(dout, q, k, v, out64.to(q.dtype), lse64.float(), None, cu, cu,
                                              max(lens), max(lens), scale, causal, -1, 0 if causal else -1, 0.0,
                                              False)
    for b in (0, 2, 3):
        lo, hi = int(cu[b]), int(cu[b + 1])
        leaves = [t[None, lo:hi].double().requires_grad_(True) for t in (q, k, v)]
        out_b, _ = naive.attention(*leaves, causal=causal, softmax_scale=scale)
        ref = dict(zip(("dq", "dk", "dv"), torch.autograd.grad((out_b * dout[None, lo:hi].double()).sum(), leaves)))
        got = {"dq": dq[None, lo:hi], "dk": dk[None, lo:hi], "dv": dv[None, lo:hi]}
        check_bwd(got, ref, torch.bfloat16, f"D={head_dim} {where}: sequence {b} next to a non-finite")
    assert dk[70:120].isnan().any()


@pytest.mark.parametrize("head_dim", BWD_HEAD_DIMS)
def test_bwd_dense_non_finite_next_batch(head_dim):
    """Dense: an inf in batch 1's V (a key every query sees, so its delta rows are inf) stays out of batch 0.
    Batch 0's last query tile runs past seqlen_q = 70, and the flat LSE / delta map loads the next (batch, head)'s
    rows there; the kernel zeroes those delta values before dS = P (dP - delta) takes them."""
    if not _has_bwd():
        pytest.skip("this build has no flashcore_sm90.bwd")
    q, k, v, dout = (rand((2, 70, 2, head_dim), torch.bfloat16) for _ in range(4))
    v[1, 0, 0, 5] = float("inf")
    scale = head_dim ** -0.5
    out64, lse64 = naive.attention(q, k, v, softmax_scale=scale)
    dq, dk, dv = torch.ops.flashcore_sm90.bwd(dout, q, k, v, out64.to(q.dtype), lse64.float(), None, None, None,
                                              70, 70, scale, False, -1, -1, 0.0, False)
    leaves = [t[:1].double().requires_grad_(True) for t in (q, k, v)]
    out0, _ = naive.attention(*leaves, softmax_scale=scale)
    ref = dict(zip(("dq", "dk", "dv"), torch.autograd.grad((out0 * dout[:1].double()).sum(), leaves)))
    check_bwd({"dq": dq[:1], "dk": dk[:1], "dv": dv[:1]}, ref, torch.bfloat16, f"D={head_dim} batch 0")
    assert not torch.isfinite(dq[1]).all()


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bwd_strided_views(head_dim):
    """q, k, v as views of one packed (batch, seqlen, 3, heads, head_dim) tensor (row stride 3 x heads x head_dim):
    the tensor maps take the strides as they are, no copies."""
    qkv = rand((2, 300, 3, 4, head_dim), torch.bfloat16)
    q, k, v = qkv.unbind(2)
    got, ref = bwd_case(q, k, v, causal=True)
    check_bwd(got, ref, torch.bfloat16, "packed qkv views")


def test_bwd_unseen_keys_get_exact_zeros():
    """Window (1, 0) with seqlen_k = 700 > seqlen_q = 100: query i sees keys 599 + i and 600 + i, so keys 0..598
    are seen by no query (9 whole K/V blocks and part of a tenth): their dK and dV must be exactly 0."""
    q = rand((1, 100, 2, 128), torch.bfloat16)
    k, v = rand((1, 700, 2, 128), torch.bfloat16), rand((1, 700, 2, 128), torch.bfloat16)
    got, ref = bwd_case(q, k, v, window=(1, 0))
    check_bwd(got, ref, torch.bfloat16, "window (1, 0)")
    assert not got["dk"][:, :599].any() and not got["dv"][:, :599].any()


@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
def test_bwd_deterministic_is_bit_identical(head_dim):
    """deterministic=True: 5 runs give bit-identical dq, dk, dv (ordered dQ accumulation), and they are correct.
    Many key blocks add into each query tile (seqlen 2048, GQA), the case where atomics would reorder. D <= 192
    order TMA reduce-adds across CTAs (one and two dQ pieces per consumer), D = 256 plain loads / stores."""
    q = rand((2, 2048, 8, head_dim), torch.bfloat16)
    k, v = rand((2, 2048, 2, head_dim), torch.bfloat16), rand((2, 2048, 2, head_dim), torch.bfloat16)
    got, ref = bwd_case(q, k, v, causal=True, deterministic=True)
    check_bwd(got, ref, torch.bfloat16, "deterministic")
    torch.manual_seed(0)
    dout = rand(q.shape, torch.bfloat16)
    out, lse = naive.attention(q, k, v, causal=True)
    args = (dout, q, k, v, out.to(q.dtype), lse.float(), None, None, None, 2048, 2048, head_dim ** -0.5, True, -1, 0,
            0.0, True)
    first = torch.ops.flashcore_sm90.bwd(*args)
    for _ in range(4):
        again = torch.ops.flashcore_sm90.bwd(*args)
        for a, b in zip(first, again):
            assert torch.equal(a, b), "deterministic backward differs between runs"


def test_bwd_runs_on_the_current_stream():
    q, k, v = (rand((2, 700, 4, 128), torch.bfloat16) for _ in range(3))
    got_main, ref = bwd_case(q, k, v, causal=True, deterministic=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got_side, _ = bwd_case(q, k, v, causal=True, deterministic=True)
    torch.cuda.current_stream().wait_stream(side)
    check_bwd(got_side, ref, torch.bfloat16, "side stream")


class _ReferenceAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        from flashcore import reference
        out, lse = reference.forward(q, k, v, softmax_scale=q.shape[-1] ** -0.5, window_right=0)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        from flashcore import reference
        q, k, v, out, lse = ctx.saved_tensors
        return reference.backward(dout, q, k, v, out, lse, softmax_scale=q.shape[-1] ** -0.5, window_right=0)


class _KernelBackwardAttention(_ReferenceAttention):
    """flashcore.reference forward (what the CUDA forward will compute) + this kernel's backward."""

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.ops.flashcore_sm90.bwd(dout.contiguous(), q, k, v, out, lse, None, None, None, q.shape[1],
                                            k.shape[1], q.shape[-1] ** -0.5, True, -1, 0, 0.0, False)


class _KernelAttention(_KernelBackwardAttention):
    """Both sm_90a kernels: flashcore_sm90::fwd (out, lse) and the backward above."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.ops.flashcore_sm90.fwd(q, k, v, None, None, 0, 0, q.shape[-1] ** -0.5, True, -1, -1, 0.0,
                                                False)
        ctx.save_for_backward(q, k, v, out, lse)
        return out


def _train(attention_fn, steps=100, seed=0):
    """A 2-layer causal transformer (bf16, D=64, 4 heads, seqlen 256) on random tokens; the target at position t is
    a fixed random map of the token at t - 1, so the loss only falls if attention (and its gradient) works.
    Returns the loss of every step."""
    torch.manual_seed(seed)
    vocab, width, heads, seqlen, batch = 256, 256, 4, 256, 8
    emb = torch.nn.Embedding(vocab, width).cuda()
    layers = torch.nn.ModuleList(torch.nn.ModuleDict({"qkv": torch.nn.Linear(width, 3 * width),
                                                      "proj": torch.nn.Linear(width, width),
                                                      "mlp": torch.nn.Sequential(torch.nn.Linear(width, 4 * width),
                                                                                 torch.nn.GELU(),
                                                                                 torch.nn.Linear(4 * width, width)),
                                                      "n1": torch.nn.LayerNorm(width),
                                                      "n2": torch.nn.LayerNorm(width)}) for _ in range(2)).cuda()
    head = torch.nn.Linear(width, vocab).cuda()
    params = list(emb.parameters()) + list(layers.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    target_map = torch.randint(0, vocab, (vocab,), device="cuda")
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (batch, seqlen), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x = emb(tokens)
            for layer in layers:
                qkv = layer["qkv"](layer["n1"](x)).view(batch, seqlen, 3, heads, width // heads).to(torch.bfloat16)
                att = attention_fn(*(qkv[:, :, i].contiguous() for i in range(3)))
                x = x + layer["proj"](att.reshape(batch, seqlen, width))
                x = x + layer["mlp"](layer["n2"](x))
            previous = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
            loss = torch.nn.functional.cross_entropy(head(x).float().view(-1, vocab), target_map[previous].view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kernels", ["bwd", "fwd+bwd"])
@pytest.mark.gpu_timeout(120)  # 100 optimizer steps, twice
def test_bwd_training_loop_matches_reference(kernels):
    """100 steps of a small transformer: the loss curve with this backward kernel (after the reference forward, or
    after the sm_90a forward kernel) follows the reference backend's (same seed, same data) and actually learns."""
    if not _has_bwd():
        pytest.skip("this build has no flashcore_sm90.bwd")
    if kernels == "fwd+bwd" and not hasattr(torch.ops.flashcore_sm90, "fwd"):
        pytest.skip("this build has no flashcore_sm90.fwd")
    ours = _train((_KernelBackwardAttention if kernels == "bwd" else _KernelAttention).apply)
    ref = _train(_ReferenceAttention.apply)
    assert all(torch.isfinite(torch.tensor(ours)))
    # On the CPU the reference run goes 5.71 -> 4.90 in 100 steps (the task needs attention to the previous token).
    assert ours[-1] < 0.9 * ours[0], f"did not learn: {ours[0]:.3f} -> {ours[-1]:.3f}"
    for step in (9, 49, 99):  # bf16 rounding alone drifts the curves apart slowly; a wrong gradient shows by 2%
        assert abs(ours[step] - ref[step]) <= 0.02 * abs(ref[step]), (step, ours[step], ref[step])
# ---------------------------------------------------------------------------------------------- attention forward
# flashcore_sm90::fwd (csrc/cuda/fwd/): the warp-specialized TMA + wgmma forward, called directly with the public
# op's arguments, against the float64 naive attention of tests/naive.py. Outputs are poisoned first (the caching
# allocator's next blocks hold NaN), so a row the kernel forgets to write shows up.

import math  # noqa: E402

import naive  # noqa: E402

FWD_HEAD_DIMS = [64, 96, 128, 192, 256]
FWD_MASKS = {  # name -> (causal, window_left, window_right, softcap)
    "none": (False, -1, -1, 0.0),
    "causal": (True, -1, -1, 0.0),
    "window": (False, 100, 30, 0.0),
    "causal_window": (True, 64, -1, 0.0),
    "softcap": (False, -1, -1, 30.0),
}


def poison_allocator(nbytes: int = 1 << 26):  # 64 MiB: more than any output or lse of these tests
    """Fill the memory the caching allocator will hand out next with NaN (then free it)."""
    junk = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del junk


def fwd_op(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None, cu_q=None, cu_k=None, max_q=0, max_k=0):
    if not hasattr(torch.ops.flashcore_sm90, "fwd"):
        pytest.skip("this build of flashcore._C has no flashcore_sm90::fwd")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    poison_allocator()
    return torch.ops.flashcore_sm90.fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window[0], window[1],
                                        softcap, False)


def check_fwd_close(out, lse, ref_out, ref_lse, what=""):
    assert out.dtype in (torch.bfloat16, torch.float16) and lse.dtype == torch.float32
    assert torch.isfinite(out).all(), f"{what}: non-finite output (unwritten rows?)"
    err = naive.rel_err(out, ref_out) if ref_out.numel() else 0.0
    assert err <= 1e-2, f"{what}: output rel err {err:.3g}"
    inf_ref = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse) & (lse < 0), inf_ref), f"{what}: -inf LSE rows differ"
    if (~inf_ref).any():
        lerr = (lse.double() - ref_lse)[~inf_ref].abs().max().item()
        assert lerr <= 1e-2 * max(1.0, ref_lse[~inf_ref].abs().max().item()), f"{what}: LSE err {lerr:.3g}"
    dead = inf_ref.transpose(-1, -2).to(out.device)  # lse (..., heads, rows) -> out's (..., rows, heads)
    assert (out[dead] == 0).all(), f"{what}: rows that see no key must be 0"


def run_dense(dtype, head_dim, sq, sk, mask, heads=(2, 2), batch=2, scale=None):
    causal, wl, wr, softcap = FWD_MASKS[mask] if isinstance(mask, str) else mask
    hq, hkv = heads
    q, k, v = rand((batch, sq, hq, head_dim), dtype), rand((batch, sk, hkv, head_dim), dtype), \
        rand((batch, sk, hkv, head_dim), dtype)
    out, lse = fwd_op(q, k, v, causal, (wl, wr), softcap, scale)
    assert out.shape == q.shape and lse.shape == (batch, hq, sq)
    ref_out, ref_lse = naive.attention(q, k, v, causal=causal, softmax_scale=scale if scale is not None else
                                       head_dim ** -0.5, window=(wl, wr), softcap=softcap)
    check_fwd_close(out, lse, ref_out, ref_lse, f"D={head_dim} {dtype} sq={sq} sk={sk} {mask} heads={heads}")


# 129 / 300: past 128-row blocks; 193 / 385: past D=64's 192-row blocks (3 consumers), ending in each one's rows
FWD_SHAPES = [(1, 1), (17, 17), (1000, 1000), (17, 1000), (1000, 17), (129, 300), (300, 129), (193, 385), (385, 193)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
@pytest.mark.parametrize("mask", list(FWD_MASKS))
@pytest.mark.parametrize("sq, sk", FWD_SHAPES, ids=[f"{a}x{b}" for a, b in FWD_SHAPES])
def test_fwd_dense_matches_reference(dtype, head_dim, mask, sq, sk):
    run_dense(dtype, head_dim, sq, sk, mask)


@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_fwd_long_ragged_sequence(head_dim, causal):
    """4097 = 32 full 128-row query blocks + 1 row (D=64: 21 of 192 + 65); several tiles per CTA (the ring's phases
    wrap across tiles)."""
    run_dense(torch.bfloat16, head_dim, 4097, 4097, (causal, -1, -1, 0.0), heads=(4, 4), batch=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
@pytest.mark.parametrize("heads", [(4, 2), (6, 1)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("mask", ["none", "causal", "window"])
def test_fwd_gqa_mqa(dtype, head_dim, heads, mask):
    run_dense(dtype, head_dim, 333, 333, mask, heads=heads)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("softcap", [0.0, 20.0])
def test_fwd_negative_scale(head_dim, softcap):
    """softmax_scale < 0: the kernel flips the scores' sign (q_sign) or folds it into the softcap's tanh."""
    run_dense(torch.bfloat16, head_dim, 200, 250, (True, -1, -1, softcap), scale=-0.3)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_fwd_many_tiles(head_dim):
    """batch 3 x 16 heads x 8 query blocks = 384 tiles on 132 CTAs (D=64: 6 blocks of 192 rows, 288 tiles); causal
    longest-first order, head groups."""
    run_dense(torch.float16, head_dim, 1000, 1000, "causal", heads=(16, 4), batch=3)


def test_fwd_no_keys():
    """seqlen_k = 0: every row sees nothing -> out 0, lse -inf, nothing loaded."""
    q = rand((2, 33, 2, 128), torch.bfloat16)
    k = torch.empty(2, 0, 2, 128, device="cuda", dtype=torch.bfloat16)
    out, lse = fwd_op(q, k, k)
    assert (out == 0).all() and torch.isinf(lse).all() and (lse < 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", FWD_HEAD_DIMS)
@pytest.mark.parametrize("mask", ["none", "causal", "window", "softcap"])
def test_fwd_varlen(dtype, head_dim, mask):
    """Packed sequences of ragged lengths (a key-less one included): rows of one sequence must not see another's
    keys, and tail rows are stored without running into the next sequence."""
    causal, wl, wr, softcap = FWD_MASKS[mask]
    lens_q, lens_k = [1, 17, 1000, 129, 5, 300], [1, 40, 1000, 0, 200, 129]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), device="cuda", dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), device="cuda", dtype=torch.int32)
    hq, hkv = 4, 2
    q = rand((sum(lens_q), hq, head_dim), dtype)
    k, v = rand((sum(lens_k), hkv, head_dim), dtype), rand((sum(lens_k), hkv, head_dim), dtype)
    out, lse = fwd_op(q, k, v, causal, (wl, wr), softcap, None, cu_q, cu_k, max(lens_q), max(lens_k))
    assert out.shape == q.shape and lse.shape == (hq, sum(lens_q))
    ref_out, ref_lse = naive.attention_varlen(q, k, v, cu_q, cu_k, causal=causal, window=(wl, wr), softcap=softcap,
                                              softmax_scale=head_dim ** -0.5)
    check_fwd_close(out, lse, ref_out, ref_lse, f"varlen D={head_dim} {dtype} {mask}")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_fwd_varlen_non_finite_neighbour(head_dim, causal):
    """An inf in one packed sequence's V and a NaN in its K stay in that sequence: the tile that runs past the
    previous sequence's end loads those rows (masked), and the kernel zeroes the V rows before P V reads them."""
    lens = [70, 50, 1000, 90]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device="cuda", dtype=torch.int32)
    q, k, v = (rand((sum(lens), 2, head_dim), torch.bfloat16) for _ in range(3))
    v[75, 1, 5] = float("inf")  # sequence 1: rows 70..119
    k[72, 0, 3] = float("nan")
    out, lse = fwd_op(q, k, v, causal, (-1, -1), 0.0, None, cu, cu, max(lens), max(lens))
    for b in (0, 2, 3):
        lo, hi = int(cu[b]), int(cu[b + 1])
        ref_out, ref_lse = naive.attention(q[None, lo:hi], k[None, lo:hi], v[None, lo:hi], causal=causal)
        check_fwd_close(out[None, lo:hi], lse[None, :, lo:hi], ref_out, ref_lse, f"sequence {b} next to a non-finite")
    assert out[70:120].isnan().any()


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_fwd_varlen_many_short_items(head_dim, causal):
    """Hundreds of short packed sequences: each CTA runs ~20 work items back to back, so Q's buffer(s) and the output
    staging buffer are reused many times and (-DFLASHCORE_FWD_SM90_ITEM_PIPELINE) most items start in the previous
    one's tail turn. Every fourth sequence starts with an inf in V and a NaN in K, which the previous sequence's last
    key tile loads past its end: the V rows must be zeroed in whichever item comes, and only those sequences are NaN."""
    gen_lens = torch.Generator().manual_seed(head_dim + causal)
    lens = torch.randint(1, 300, (400,), generator=gen_lens).tolist()
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device="cuda", dtype=torch.int32)
    q, k, v = (rand((sum(lens), 4, head_dim), torch.bfloat16) for _ in range(3))
    poisoned = list(range(3, len(lens), 4))
    for b in poisoned:
        v[int(cu[b]), 1, 5] = float("inf")
        k[int(cu[b]), 2, 3] = float("nan")
    out, lse = fwd_op(q, k, v, causal, (-1, -1), 0.0, None, cu, cu, max(lens), max(lens))
    for b in range(len(lens)):
        lo, hi = int(cu[b]), int(cu[b + 1])
        if b in poisoned:
            assert not torch.isfinite(out[lo:hi]).all(), f"sequence {b}: its own inf vanished"
            continue
        ref_out, ref_lse = naive.attention(q[None, lo:hi], k[None, lo:hi], v[None, lo:hi], causal=causal)
        check_fwd_close(out[None, lo:hi], lse[None, :, lo:hi], ref_out, ref_lse, f"sequence {b} of {len(lens)}")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fwd_strided_views(head_dim):
    """q, k, v as views of one packed (batch, seqlen, 3, heads, head_dim) tensor: the tensor maps take the strides."""
    qkv = rand((2, 257, 3, 4, head_dim), torch.bfloat16)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out, lse = fwd_op(q, k, v, True)
    ref_out, ref_lse = naive.attention(q, k, v, causal=True)
    check_fwd_close(out, lse, ref_out, ref_lse, "strided views")


def test_fwd_runs_on_the_current_stream():
    q, k, v = (rand((2, 700, 4, 128), torch.bfloat16) for _ in range(3))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out, lse = fwd_op(q, k, v, True)
    torch.cuda.current_stream().wait_stream(side)
    ref_out, ref_lse = naive.attention(q, k, v, causal=True)
    check_fwd_close(out, lse, ref_out, ref_lse, "side stream")


def test_fwd_through_the_public_api(monkeypatch):
    """flashcore.attention routes sm_90 tensors here when FLASHCORE_BACKEND=cuda_sm90 (opt-in until proven)."""
    from flashcore import _backends
    backend = _backends.BACKENDS["cuda_sm90"]
    if backend.unusable_reason(torch.device("cuda")) is not None:
        pytest.skip(backend.unusable_reason(torch.device("cuda")))
    q, k, v = (rand((1, 300, 2, 64), torch.bfloat16) for _ in range(3))
    out = backend.fwd(q, k, v, None, None, 0, 0, 0.125, True, -1, -1, 0.0, False)[0]
    ref_out, _ = naive.attention(q, k, v, causal=True, softmax_scale=0.125)
    assert naive.rel_err(out, ref_out) <= 1e-2
    assert math.isfinite(out.float().sum().item())


# ---- the dynamic tile scheduler (csrc/cuda/fwd/schedule.h): CTAs claim tiles from a counter zeroed per launch.
# Which CTA runs a tile must not change a single bit of it: each tile is computed whole by one CTA in a fixed key
# order. FLASHCORE_SM90_STATIC_SCHEDULE=1 (read once per process) selects the static round-robin, so the two are
# compared across processes.

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

SCHEDULE_CASE = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from test_build_checks import find_extension
torch.ops.load_library(str(find_extension()))
gen = torch.Generator(device="cuda").manual_seed(1234)
rand = lambda *shape: torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)
fwd = torch.ops.flashcore_sm90.fwd
results = []
# Dense causal, GQA: 32 query blocks x 2 sequences x 16 heads = 1024 tiles, 7.8 waves on 132 SMs.
q, k, v = rand(2, 4096, 16, 128), rand(2, 4096, 4, 128), rand(2, 4096, 4, 128)
results += fwd(q, k, v, None, None, 0, 0, 128 ** -0.5, True, -1, -1, 0.0, False)
# Varlen causal, D=256 (Q freed after the epilogue): blocks past a short sequence's end and a key-less sequence
# are handed out as tiles too; 8 blocks x 5 sequences x 8 heads = 320 tiles.
lens_q, lens_k = [1, 1000, 129, 300, 900], [1, 1000, 0, 200, 1000]
cu = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device="cuda", dtype=torch.int32)
q = rand(sum(lens_q), 8, 256)
k, v = rand(sum(lens_k), 8, 256), rand(sum(lens_k), 8, 256)
results += fwd(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), 256 ** -0.5, True, -1, -1, 0.0, False)
torch.save([r.cpu() for r in results], sys.argv[1])
"""


def run_schedule_case(tmp_path, static: bool) -> list:
    if not hasattr(torch.ops.flashcore_sm90, "fwd"):
        pytest.skip("this build of flashcore._C has no flashcore_sm90::fwd")
    path = tmp_path / ("static.pt" if static else "dynamic.pt")
    env = {**os.environ, "FLASHCORE_SM90_STATIC_SCHEDULE": "1" if static else "0"}
    proc = subprocess.run([sys.executable, "-c", SCHEDULE_CASE, str(path), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path)


@pytest.mark.gpu_timeout(120)  # two subprocesses, each starting torch and CUDA
def test_fwd_static_and_dynamic_schedules_are_bit_identical(tmp_path):
    static, dynamic = run_schedule_case(tmp_path, True), run_schedule_case(tmp_path, False)
    for name, a, b in zip(("out", "lse", "varlen out", "varlen lse"), static, dynamic):
        assert torch.isfinite(a).any(), f"{name}: nothing written"
        assert torch.equal(a, b), f"{name}: the dynamic schedule changed {(a != b).sum().item()} values"


def test_fwd_dynamic_schedule_replays_in_a_cuda_graph():
    """The counter is zeroed by a memset node on every replay: a replay that started from the previous launch's
    count would run only each CTA's first tile, leaving the NaN poured over the outputs below."""
    if not hasattr(torch.ops.flashcore_sm90, "fwd"):
        pytest.skip("this build of flashcore._C has no flashcore_sm90::fwd")
    q, k, v = (rand((2, 2048, 8, 128), torch.bfloat16) for _ in range(3))  # 16 x 2 x 8 = 256 tiles > 132 SMs

    def op():
        return torch.ops.flashcore_sm90.fwd(q, k, v, None, None, 0, 0, 128 ** -0.5, True, -1, -1, 0.0, False)

    expected = op()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op()  # warm-up outside the capture, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = op()
    for replay in range(3):
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1]), f"replay {replay}"


# ---- the sm_90a backward's dynamic item scheduler (csrc/cuda/tile_handoff.h): CTAs claim K/V-block items from a
# counter in the zero-filled workspace. dK and dV are summed inside one CTA in a fixed order, and in deterministic
# mode dQ is added in rank order whoever runs the blocks, so the static round-robin and the dynamic schedule must
# agree to the bit there; in atomic mode only dQ's fp32 add order may differ. Compared across processes, as above.

BWD_SCHEDULE_CASE = r"""
import sys, torch
sys.path.insert(0, sys.argv[3])
from test_build_checks import find_extension
torch.ops.load_library(str(find_extension()))
bwd = torch.ops.flashcore_sm90.bwd
results = []
for case in torch.load(sys.argv[1]):
    args = [a.cuda() if torch.is_tensor(a) else a for a in case["args"]]
    for det in (True, False):
        results += bwd(*args, det)
torch.save([r.cpu() for r in results], sys.argv[2])
"""


def bwd_schedule_inputs(path: Path) -> None:
    """Causal, multi-wave on 132 SMs: dense GQA D=128 (32 blocks x 8 K/V heads x 2 = 512 items, 3.9 waves) and
    varlen D=256 (64-key blocks; a key-less sequence and blocks past short sequences are handed out too)."""
    cases = []
    q, k, v = (rand((2, 4096, h, 128), torch.bfloat16) for h in (16, 8, 8))
    out, lse = naive.attention(q, k, v, causal=True)
    cases.append({"args": (rand(q.shape, torch.bfloat16), q, k, v, out.to(q.dtype), lse.float(), None, None, None,
                           4096, 4096, 128 ** -0.5, True, -1, 0, 0.0)})
    lens_q, lens_k = [1, 1000, 129, 300, 900], [1, 1000, 0, 200, 1000]
    cu = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device="cuda", dtype=torch.int32)
    q = rand((sum(lens_q), 16, 256), torch.bfloat16)
    k, v = rand((sum(lens_k), 8, 256), torch.bfloat16), rand((sum(lens_k), 8, 256), torch.bfloat16)
    out, lse = naive.attention_varlen(q, k, v, cu(lens_q), cu(lens_k), causal=True, softmax_scale=256 ** -0.5)
    cases.append({"args": (rand(q.shape, torch.bfloat16), q, k, v, out.to(q.dtype), lse.float(), None, cu(lens_q),
                           cu(lens_k), max(lens_q), max(lens_k), 256 ** -0.5, True, -1, 0, 0.0)})
    torch.save([{"args": tuple(a.cpu() if torch.is_tensor(a) else a for a in c["args"])} for c in cases], path)


def run_bwd_schedule_case(tmp_path, inputs: Path, static: bool) -> list:
    path = tmp_path / ("bwd_static.pt" if static else "bwd_dynamic.pt")
    env = {**os.environ, "FLASHCORE_SM90_STATIC_SCHEDULE": "1" if static else "0"}
    proc = subprocess.run([sys.executable, "-c", BWD_SCHEDULE_CASE, str(inputs), str(path), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path)


@pytest.mark.gpu_timeout(240)  # two subprocesses and a float64 reference
def test_bwd_static_and_dynamic_schedules_agree(tmp_path):
    if not _has_bwd():
        pytest.skip("this build has no flashcore_sm90.bwd")
    inputs = tmp_path / "bwd_inputs.pt"
    bwd_schedule_inputs(inputs)
    static, dynamic = run_bwd_schedule_case(tmp_path, inputs, True), run_bwd_schedule_case(tmp_path, inputs, False)
    assert len(static) == len(dynamic) == 2 * 2 * 3  # 2 cases x (deterministic, atomic) x (dq, dk, dv)
    for i, (a, b) in enumerate(zip(static, dynamic)):
        case, det, name = i // 6, (i // 3) % 2 == 0, ("dq", "dk", "dv")[i % 3]
        what = f"case {case} {'deterministic' if det else 'atomic'} {name}"
        assert torch.isfinite(a).all() and a.any(), f"{what}: nothing (finite) written"
        if det or name != "dq":
            assert torch.equal(a, b), f"{what}: the dynamic schedule changed {(a != b).sum().item()} values"
        else:  # fp32 atomics in another order: a rounding apart
            err = (a.float() - b.float()).abs().max() / a.float().abs().max()
            assert err <= 1e-2, f"{what}: static and dynamic differ by {err:.3g} of max |dq|"
