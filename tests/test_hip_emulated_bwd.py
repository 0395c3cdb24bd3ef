"""The gfx942 attention backward (csrc/hip/bwd_kernel.h), executed lane by lane on the CPU (csrc/hip_emu).

The harness (tests/test_hip_emulated.py describes it) runs the real main kernel and the dQ postprocess over the
grids the ROCm launch uses, with BwdParams built by the extension's own make_fwd_params + make_bwd_params and the
workspace sized by the kernel's own bwd_workspace_bytes_for, every global access bounds-checked and LDS poisoned.
What is checked here:
- dq, dk, dv against flashcore.reference's backward in float64 (with dlse), over head dims x dtypes, ragged
  seqlens (1, 17, ...), causal, windows, softcap, GQA/MQA, varlen with empty sequences, negative scale; dq/dk/dv
  start as NaN, so an element the kernels do not write fails;
- keys no query sees get dK = dV = 0, rows with lse = -inf contribute nothing;
- deterministic mode: bit-identical across OS thread counts, lane schedules and block dispatch order (blocks
  handed out last to first), while the atomic mode's sums follow the dispatch order;
- lanes run one wave at a time in both orders, so a missing barrier changes the result.
"""

from __future__ import annotations

import ctypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import shutil
import subprocess

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = [("hip_emu/emu.cpp", []),
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Bf16"]),
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Fp16"])]
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_HIP_EMU", "-Wno-psabi", f"-I{CSRC}"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# max |grad - ref| / max |ref|: the kernel rounds P and dS to 16 bits before their MFMAs, as every
# FlashAttention backward does
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(scope="module")
def emu():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    import tempfile
    out = Path(tempfile.mkdtemp(prefix="hip_emu_bwd_"))
    start = time.monotonic()

    def compile_one(index: int) -> Path:
        source, flags = SOURCES[index]
        obj = out / f"{index}_{Path(source).stem}.o"
        subprocess.run([cxx, *CXX_FLAGS, *flags, "-x", "c++", "-c", str(CSRC / source), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        return obj

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            objects = list(pool.map(compile_one, range(len(SOURCES))))
        library = out / "libflashcore_hip_emu_bwd.so"
        subprocess.run([cxx, "-shared", "-pthread", *map(str, objects), "-o", str(library)], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the CPU harness failed:\n{' '.join(exc.cmd)}\n{exc.stderr}")
    print(f"CPU harness (backward) built in {time.monotonic() - start:.1f} s")
    return ctypes.CDLL(str(library))


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _delta(out, dout, dlse, varlen):
    """rowsum(dout * out) - dlse in fp32, laid out like lse (what csrc/bwd.cpp's preprocess hands the kernel)."""
    d = (dout.float() * out.float()).sum(-1)  # (b, s, h) or (total, h)
    d = d.transpose(0, 1) if varlen else d.permute(0, 2, 1)
    d = d.contiguous()
    return d - dlse if dlse is not None else d


def emu_bwd(emu, q, k, v, out, lse, dout, dlse=None, *, softmax_scale=None, causal=False, window=(-1, -1),
            softcap=0.0, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, deterministic=False,
            os_threads=2, schedule=0, reverse_blocks=False):
    """The backward kernels in the harness; returns (dq, dk, dv, stats). dq/dk/dv start as NaN."""
    varlen = cu_seqlens_q is not None
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    delta = _delta(out, dout, dlse, varlen)
    grads = [torch.full(t.shape, float("nan"), dtype=t.dtype) for t in (q, k, v)]
    tensors8 = (q, k, v, out, dout, *grads)
    tensors = (ctypes.c_void_p * 8)(*(t.data_ptr() for t in tensors8))
    sizes = (ctypes.c_int64 * 32)(*[x for t in tensors8 for x in list(t.shape) + [1] * (4 - t.dim())])
    strides = (ctypes.c_int64 * 32)(*[x for t in tensors8 for x in list(t.stride()) + [1] * (4 - t.dim())])
    dims = (ctypes.c_int * 8)(*(t.dim() for t in tensors8))
    batch = len(cu_seqlens_q) - 1 if varlen else q.shape[0]
    fn = emu.emu_bwd_Bf16 if q.dtype == torch.bfloat16 else emu.emu_bwd_Fp16
    stats = (ctypes.c_uint64 * 4)()
    workspace_bytes = ctypes.c_int64(0)
    lse = lse.contiguous()

    def call(workspace):
        error = ctypes.create_string_buffer(512)
        rc = fn(tensors, sizes, strides, dims, _ptr(lse), _ptr(delta), ctypes.c_int64(lse.numel()),
                _ptr(cu_seqlens_q), _ptr(cu_seqlens_k), batch, max_seqlen_q, max_seqlen_k, ctypes.c_float(scale),
                int(causal), window[0], 0 if causal else window[1], ctypes.c_float(softcap), int(deterministic),
                _ptr(workspace), ctypes.byref(workspace_bytes), os_threads, schedule, int(reverse_blocks), stats,
                error, ctypes.c_int(len(error)))
        assert rc == 0, error.value.decode()

    call(None)
    call(torch.zeros(max(workspace_bytes.value, 1), dtype=torch.uint8))
    return (*grads, dict(zip(("blocks", "fiber_switches", "wave_collectives", "barriers"), stats)))


def _options(q, softmax_scale, causal, window, softcap):
    return dict(softmax_scale=softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5,
                window_left=window[0], window_right=0 if causal else window[1], softcap=softcap)


def forward_for(q, k, v, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0, cu_seqlens_q=None,
                cu_seqlens_k=None):
    """out (rounded to q's dtype, as a kernel returns it) and lse (float32) from flashcore.reference."""
    from flashcore import reference
    options = _options(q, softmax_scale, causal, window, softcap)
    if cu_seqlens_q is None:
        out, lse = reference.forward(q.double(), k.double(), v.double(), **options)
    else:
        out, lse = reference.forward_varlen(q.double(), k.double(), v.double(), cu_seqlens_q, cu_seqlens_k, **options)
    return out.to(q.dtype), lse.float()


def reference_bwd(q, k, v, out, lse, dout, dlse, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0,
                  cu_seqlens_q=None, cu_seqlens_k=None):
    from flashcore import reference
    options = _options(q, softmax_scale, causal, window, softcap)
    args = [t.double() if t is not None else None for t in (dout, q, k, v, out, lse, dlse)]
    if cu_seqlens_q is None:
        return reference.backward(*args, **options)
    return reference.backward_varlen(*args, cu_seqlens_q, cu_seqlens_k, **options)


def assert_grads_match(got, want, dtype):
    tolerance = TOLERANCE[dtype]
    for name, x, ref in zip(("dq", "dk", "dv"), got, want):
        assert not x.isnan().any(), f"{name}: {x.isnan().sum().item()} elements NaN (unwritten?)"
        err = (x.double() - ref).abs().max().item()
        scale = max(ref.abs().max().item(), 1e-6)
        assert err <= tolerance * scale, f"{name}: max |err| = {err:.3g}, {err / scale:.3g} of max |ref| " \
                                         f"(limit {tolerance})"


def check_dense(emu, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, *, with_dlse=True,
                deterministic=False, schedule=0, **options):
    q = torch.randn(batch, seqlen_q, heads_q, head_dim).to(dtype)
    k = torch.randn(batch, seqlen_k, heads_kv, head_dim).to(dtype)
    v = torch.randn(batch, seqlen_k, heads_kv, head_dim).to(dtype)
    dout = torch.randn(batch, seqlen_q, heads_q, head_dim).to(dtype)
    out, lse = forward_for(q, k, v, **options)
    dlse = torch.randn(lse.shape) if with_dlse else None
    *got, stats = emu_bwd(emu, q, k, v, out, lse, dout, dlse, deterministic=deterministic, schedule=schedule,
                          **options)
    want = reference_bwd(q, k, v, out, lse, dout, dlse, **options)
    assert_grads_match(got, want, dtype)
    return got, stats


HEAD_DIMS = [64, 96, 128, 192, 256]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_backward_head_dims(emu, head_dim, dtype):
    check_dense(emu, 1, 40, 150, 2, 1, head_dim, DTYPES[dtype], causal=True)
