"""GPU tests of the sm_90a kernels against float64 torch computations. Need an sm_90 GPU (H100/H200) and the
CUDA build of the extension; skipped with the reason otherwise.

The kernels are reached through torch.ops.flashcore_sm90.*, loaded from the built library directly, so these
tests do not depend on the Python package's routing.
"""

from __future__ import annotations

import pytest
import torch

from test_build_checks import find_extension


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
