"""The public API: argument names, outputs, every bad input, backend choice and its explanations."""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import flashcore
from flashcore import _backends

import naive


def _qkv(b=2, sq=16, sk=16, hq=4, hkv=2, d=32, dtype=torch.bfloat16):
    return (torch.randn(b, sq, hq, d, dtype=dtype), torch.randn(b, sk, hkv, d, dtype=dtype),
            torch.randn(b, sk, hkv, d, dtype=dtype))


def _packed(lens=(3, 7), hq=4, hkv=2, d=32, dtype=torch.bfloat16):
    total = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return (torch.randn(total, hq, d, dtype=dtype), torch.randn(total, hkv, d, dtype=dtype),
            torch.randn(total, hkv, d, dtype=dtype), cu, max(lens))


def test_argument_names_match_flash_attn():
    """Users switch from flash_attn by changing the import: the shared names must be the same."""
    dense = inspect.signature(flashcore.attention).parameters
    for name in ("q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
                 "alibi_slopes", "deterministic"):
        assert name in dense, name
    varlen = list(inspect.signature(flashcore.attention_varlen).parameters)
    assert varlen[:7] == ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_outputs_have_the_documented_shapes_and_dtypes(dtype):
    q, k, v = _qkv(b=3, sq=10, sk=21, hq=6, hkv=3, d=40, dtype=dtype)
    out = flashcore.attention(q, k, v)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == dtype
    out, lse = flashcore.attention(q, k, v, return_lse=True)
    assert lse.shape == (3, 6, 10) and lse.dtype == torch.float32
    assert out.is_contiguous()
    qp, kp, vp, cu, mx = _packed(dtype=dtype)
    out, lse = flashcore.attention_varlen(qp, kp, vp, cu, cu, mx, mx, return_lse=True)
    assert out.shape == qp.shape and out.dtype == dtype and lse.shape == (4, qp.shape[0])


def test_default_scale_is_inverse_sqrt_head_dim_and_explicit_scale_is_used():
    q, k, v = _qkv(dtype=torch.float64)
    ref, _ = naive.attention(q, k, v, softmax_scale=32 ** -0.5)
    assert naive.rel_err(flashcore.attention(q, k, v), ref) < 1e-12
    ref, _ = naive.attention(q, k, v, softmax_scale=0.7)
    assert naive.rel_err(flashcore.attention(q, k, v, softmax_scale=0.7), ref) < 1e-12


def test_causal_overrides_the_right_window_as_in_flash_attn():
    q, k, v = _qkv(sq=20, sk=20, dtype=torch.float64)
    a = flashcore.attention(q, k, v, causal=True, window_size=(5, 9))
    b = flashcore.attention(q, k, v, window_size=(5, 0))
    assert torch.equal(a, b)


def test_noncontiguous_but_last_dim_contiguous_inputs_work():
    base = torch.randn(2, 4, 16, 32, dtype=torch.float64)  # (b, h, s, d): a transposed view is legal
    q = k = v = base.transpose(1, 2)
    ref, _ = naive.attention(q, k, v)
    assert naive.rel_err(flashcore.attention(q, k, v), ref) < 1e-12


# ---- bad input: each raises before any kernel runs, naming the argument ----

def _bad_dense():
    q, k, v = _qkv()
    return [
        ("wrong rank q", (q[0], k, v), {}, ValueError, "q must have 4 dims"),
        ("wrong rank k", (q, k[0], v), {}, ValueError, "k must have 4 dims"),
        ("not a tensor", (q, k.tolist(), v), {}, TypeError, "k must be a torch.Tensor"),
        ("integer dtype", (q.int(), k.int(), v.int()), {}, TypeError, "q.dtype"),
        ("mismatched dtype", (q, k.half(), v), {}, TypeError, "k.dtype"),
        ("mismatched v dtype", (q, k, v.float()), {}, TypeError, "v.dtype"),
        ("mismatched batch", (q, k[:1], v[:1]), {}, ValueError, "batch"),
        ("mismatched head_dim", (q, k[..., :16], v[..., :16]), {}, ValueError, "head_dim"),
        ("k/v shapes differ", (q, k, v[:, :8]), {}, ValueError, "same shape"),
        ("heads not divisible", (torch.randn(2, 16, 3, 32, dtype=torch.bfloat16), k, v), {}, ValueError,
         "multiple of heads"),
        ("non-contiguous last dim", (q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v), {}, ValueError,
         "contiguous in its last dim"),
        ("seqlen 0 q", (q[:, :0], k, v), {}, ValueError, "seqlen of q is 0"),
        ("seqlen 0 k", (q, k[:, :0], v[:, :0]), {}, ValueError, "seqlen of k is 0"),
        ("window < -1", (q, k, v), dict(window_size=(-2, 0)), ValueError, "window_size[0]"),
        ("window right < -1", (q, k, v), dict(window_size=(4, -5)), ValueError, "window_size[1]"),
        ("window not a pair", (q, k, v), dict(window_size=3), TypeError, "window_size"),
        ("window float", (q, k, v), dict(window_size=(2.5, 0)), TypeError, "window_size[0]"),
        ("softcap < 0", (q, k, v), dict(softcap=-1.0), ValueError, "softcap"),
        ("softcap nan", (q, k, v), dict(softcap=float("nan")), ValueError, "softcap"),
        ("scale not finite", (q, k, v), dict(softmax_scale=float("inf")), ValueError, "softmax_scale"),
        ("scale wrong type", (q, k, v), dict(softmax_scale="0.1"), TypeError, "softmax_scale"),
        ("causal not bool", (q, k, v), dict(causal=1), TypeError, "causal"),
        ("dropout", (q, k, v), dict(dropout_p=0.1), ValueError, "dropout_p"),
        ("alibi", (q, k, v), dict(alibi_slopes=torch.ones(4)), ValueError, "alibi_slopes"),
    ]


@pytest.mark.parametrize("case", _bad_dense(), ids=lambda c: c[0])
def test_bad_dense_input_raises_naming_the_argument(case, monkeypatch):
    _, args, kwargs, exc, words = case
    called = []
    monkeypatch.setattr(_backends.ReferenceBackend, "fwd", lambda *a: called.append(1))
    with pytest.raises(exc, match=f".*{words.replace('[', '.').replace(']', '.')}"):
        flashcore.attention(*args, **kwargs)
    assert not called, "a backend ran before the input was rejected"


def test_mismatched_device_is_rejected():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        flashcore.attention(q, k.to("meta"), v)


def _bad_varlen():
    q, k, v, cu, mx = _packed()
    total = q.shape[0]
    return [
        ("cu not int32", dict(cu_seqlens_q=cu.long()), TypeError, "cu_seqlens_q.dtype"),
        ("cu_k not int32", dict(cu_seqlens_k=cu.float()), TypeError, "cu_seqlens_k.dtype"),
        ("cu 2-D", dict(cu_seqlens_q=cu[None]), ValueError, "cu_seqlens_q must be 1-D"),
        ("cu not from 0", dict(cu_seqlens_q=cu + 1), ValueError, r"cu_seqlens_q\[0\] is 1"),
        ("cu decreasing", dict(cu_seqlens_k=torch.tensor([0, 8, total - 9], dtype=torch.int32)), ValueError,
         "non-decreasing"),
        ("cu last != total", dict(cu_seqlens_q=torch.tensor([0, 3, total - 1], dtype=torch.int32)), ValueError,
         r"cu_seqlens_q\[-1\]"),
        ("cu lengths differ", dict(cu_seqlens_k=torch.tensor([0, 3, 5, total], dtype=torch.int32)), ValueError,
         "entries"),
        ("max_seqlen too small", dict(max_seqlen_q=2), ValueError, "max_seqlen_q is 2"),
        ("max_seqlen not int", dict(max_seqlen_k=7.0), ValueError, "max_seqlen_k"),
        ("q rank", dict(q=q[None]), ValueError, "q must have 3 dims"),
        ("zero tokens", dict(q=q[:0], cu_seqlens_q=torch.zeros(3, dtype=torch.int32)), ValueError,
         "total tokens of q is 0"),
    ]


@pytest.mark.parametrize("case", _bad_varlen(), ids=lambda c: c[0])
def test_bad_varlen_input_raises_naming_the_argument(case):
    _, change, exc, words = case
    q, k, v, cu, mx = _packed()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=mx, max_seqlen_k=mx)
    args.update(change)
    with pytest.raises(exc, match=words):
        flashcore.attention_varlen(**args)


def test_kernel_backends_reject_unsupported_head_dim_and_dtype():
    """The kernels' own limits (checked without a GPU: `check` runs before anything launches)."""
    sm90 = _backends.BACKENDS["cuda_sm90"]
    q, k, v = _qkv(d=80)
    with pytest.raises(ValueError, match="head_dim is 80.*64, 96, 128, 192, 256"):
        sm90.check(q, k, v)
    q, k, v = _qkv(d=128, dtype=torch.float32)
    with pytest.raises(TypeError, match="q.dtype is torch.float32.*FLASHCORE_BACKEND=reference"):
        sm90.check(q, k, v)
    sm90.check(*_qkv(d=128))  # bf16, d=128: accepted


# ---- backend choice ----

def test_cpu_tensors_are_served_by_the_reference():
    assert flashcore.backend("cpu") == "reference"
    info = flashcore.info()
    json.dumps(info)  # serialisable for bench results
    cpu = [d for d in info["devices"] if d["device"] == "cpu"][0]
    assert cpu["backend"] == "reference" and cpu["why"]
    assert set(info["backends"]) == {"cuda_sm90", "hip_gfx942", "reference"}


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "FLASHCORE_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_unknown_backend_name_is_a_clear_error_at_import():
    res = _run("import flashcore", FLASHCORE_BACKEND="cuda_sm80")
    assert res.returncode != 0
    assert "FLASHCORE_BACKEND='cuda_sm80' is not a backend; expected one of cuda_sm90, hip_gfx942, reference" \
        in res.stderr


@pytest.mark.parametrize("name", ["cuda_sm90", "hip_gfx942"])
def test_requested_kernel_backend_that_cannot_serve_cpu_says_why(name):
    code = ("import torch, flashcore\n"
            "q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)\n"
            "try:\n"
            "    flashcore.attention(q, q, q)\n"
            "except flashcore.BackendUnavailableError as e:\n"
            "    print('ERR', e)\n")
    res = _run(code, FLASHCORE_BACKEND=name)
    assert res.returncode == 0, res.stderr
    assert f"ERR FLASHCORE_BACKEND={name} cannot serve cpu:" in res.stdout
    # the reason is specific: which of build, extension, kernels or device is missing
    assert any(w in res.stdout for w in ("not a CUDA build", "not a HIP build", "extension", "not on a GPU"))


def test_requested_reference_serves_everything():
    res = _run("import flashcore; print(flashcore.backend('cpu'), flashcore.info()['requested'])",
               FLASHCORE_BACKEND="reference")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["reference", "reference"]


def test_kernel_backends_stay_off_by_default_until_proven_on_hardware():
    for name in ("cuda_sm90", "hip_gfx942"):
        on, why = _backends.BACKENDS[name].default_on()
        assert not on and f"FLASHCORE_BACKEND={name}" in why


def test_python_m_flashcore_prints_info():
    res = _run("import runpy; runpy.run_module('flashcore', run_name='__main__')")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["devices"][0]["backend"] == "reference"
