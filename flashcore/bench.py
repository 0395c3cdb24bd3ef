"""Attention throughput: flashcore against torch SDPA's backends and FlashAttention 2/3, in one run.

    python -m flashcore.bench                      # full sweep on the GPU (CPU: a smoke sweep)
    python -m flashcore.bench --quick --head-dims 128 --causal 1 --mode fwd --peers flashcore,sdpa_cudnn

What is measured (read this before quoting a number):
- Sweep (FlashAttention papers' convention): batch·seqlen = 16384 tokens and heads·head_dim = 2048
  held fixed, seqlen 512 … 16k, head_dim 64/128/256, causal on/off, bf16.
- FLOPs: fwd = 4·batch·heads·seqlen_q·seqlen_k·head_dim, halved when causal; bwd = 2.5 × fwd;
  fwd+bwd = 3.5 × fwd. "bwd" rows are not measured on their own: their time is the fwd+bwd median
  minus the fwd median of the same implementation and shape.
- Layout: inputs live in flashcore's (batch, seqlen, heads, head_dim). SDPA takes (batch, heads,
  seqlen, head_dim), so it gets transpose *views* of the same tensors (no copy) and its output is
  viewed back. Any copy a backend makes to reach its own layout is inside the timed region: every
  implementation is timed from the same (B, S, H, D) tensors to its output (and, for fwd+bwd, to
  dq/dk/dv), which is what a model holding (B, S, H, D) activations pays.
- fwd times one call; fwd+bwd times the call plus torch.autograd.grad(out, (q, k, v), dout).
- GPU timing: CUDA events around every call (events work on ROCm too), WARMUP untimed calls first,
  then the median of REPEATS calls (fewer for slow implementations: at most CASE_SECONDS of timing a
  case). Each tensor of the sweep is 64 MiB (> the H100's 50 MB L2), so no cache flushing is done.
- Peak: the median of PEAK_REPEATS 8192³ bf16 torch.matmul on random data; every result is also
  given as a fraction of it.
- Correctness: before timing, each implementation's output (and gradients, for fwd+bwd) on that
  shape is compared with a float32 reference (TF32 off) by ‖x − ref‖ / ‖ref‖. The reference runs on
  the first batches/heads of the same inputs (a slice of at most CHECK_MAX_SCORES scores; heads and
  batches are independent, so the slice of the full call's result is exact to compare).
- Peers "flashcore" (flashcore.attention: whichever backend the routing picks; the sm_90a kernels are opt-in
  until proven, so on an H100 without FLASHCORE_BACKEND=cuda_sm90 that is the reference), "flashcore_sm90"
  (torch.ops.flashcore_sm90.fwd and .bwd called directly: the sm_90a kernels) and "flashcore_sm90_det" (the same
  with the deterministic backward).
- CPU (no GPU): a tiny float32 sweep timed with time.perf_counter, peers flashcore and SDPA math.
  It exists so CI exercises this module; its numbers mean nothing.

A peer that is missing or fails on a shape is recorded as "unsupported" with the error text.
Exit status is 1 when a flashcore case fails or is wrong (peers' failures are only recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import flashcore

# ---- the sweep -----------------------------------------------------------------------------------
TOKENS = 16384  # batch·seqlen held fixed across seqlens (FlashAttention benchmark convention)
HIDDEN = 2048  # heads·head_dim held fixed across head dims (same convention)
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)  # the sweep; 16k is where the anchors top out
HEAD_DIMS = (128, 64, 256)  # 128 first: the published anchors are D=128, so a run cut short covers them
QUICK_SEQLENS = (1024, 8192)  # one short and one long sequence per head dim: a 1-minute smoke of the GPU path
MODES = ("fwd", "fwdbwd")  # requested modes; with both, a "bwd" row times the backward alone

# ---- odd shapes (--odd-shapes): what the shape advisor (flashcore.advise) is validated on ---------------------
ODD_HEAD_DIMS = (64, 96, 128, 192, 256)  # every head dim the kernels have
ODD_HEADS = (12, 20, 28, 36, 40)  # head counts that do not divide the SM/CU counts evenly (issue 9: 12...40)
ODD_SEQLENS = (1000, 1900, 3000, 4097, 6100)  # none a multiple of 128: every shape pads its last tiles
ODD_TOKENS = 16384  # batch = round(ODD_TOKENS / seqlen): the same order of work as the standard sweep
CPU_ODD_SHAPES = ((2, 65, 3, 32), (1, 130, 5, 64))  # (batch, seqlen, heads, head_dim): CI smoke, milliseconds

# ---- FLOP convention (shared/HARDWARE.md) ----------------------------------------------------------
FWD_FLOPS_PER_MAC_PRODUCT = 4  # two matmuls (Q·Kᵀ, P·V), 2 FLOPs per multiply-add
CAUSAL_FLOP_FACTOR = 0.5  # a causal square mask keeps about half the scores ((S+1)/2S exactly; convention)
BWD_FLOP_FACTOR = 2.5  # bwd does 5 matmuls of the forward's size (recomputed S, dV, dP, dQ, dK) to its 2

# ---- timing ----------------------------------------------------------------------------------------
GPU_WARMUP = 5  # untimed calls: module load, cuBLAS/cuDNN handle creation and clock ramp stay out
GPU_REPEATS = 30  # median of 30 events per case; the full sweep then takes ~1-2 min per implementation
QUICK_WARMUP, QUICK_REPEATS = 3, 10  # --quick trades a noisier median for a ~4x shorter run
MIN_REPEATS = 3  # a median needs at least three samples
CASE_SECONDS = 3.0  # timing budget of one case: slow implementations (the reference) get fewer repeats
PEAK_N = 8192  # 8192³ bf16 matmul: large enough to saturate an H100/MI300X (HARDWARE.md: 798 TFLOP/s)
PEAK_WARMUP, PEAK_REPEATS = 3, 20  # the matmul is ~1.4 ms on an H100; 20 samples cost nothing

# ---- CPU smoke sweep (numbers meaningless; exercises the code in CI) --------------------------------
CPU_TOKENS = 256  # keeps every CPU case in the milliseconds
CPU_HIDDEN = 128  # gives 4 / 2 heads at head_dim 32 / 64
CPU_SEQLENS = (64, 128)  # two seqlens so the plot has lines and batch > 1
CPU_HEAD_DIMS = (32, 64)  # two head dims, small enough for a 2-core CI machine
CPU_WARMUP, CPU_REPEATS = 1, 3
CPU_PEAK_N = 512  # a CPU "peak" is meaningless; a small matmul keeps the run short

# ---- correctness --------------------------------------------------------------------------------
CHECK_MAX_SCORES = 1 << 28  # the fp32 reference's slice holds ≤ 2^28 scores (1 GiB; autograd keeps ~4)
# ‖x − ref‖/‖ref‖ limits: bf16 operands land between 1e-3 and 1e-2 (METHOD.md), gradients a little
# higher; fp16 has 3 more mantissa bits; fp32 (CPU, or TF32 kernels ~3e-4) stays far under 1e-3.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-3}
SEED = 1234  # inputs are fresh random normals per shape, from SEED + shape index (reproducible)
ERROR_CHARS = 600  # error texts in the JSON are cut to this length

SCHEMA = "flashcore.bench/1"
GPU_PEERS = ("flashcore", "flashcore_sm90", "flashcore_sm90_det", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "fa2",
             "fa3")
CPU_PEERS = ("flashcore", "sdpa_math")


def fwd_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs by the FlashAttention convention (causal halves the count)."""
    flops = FWD_FLOPS_PER_MAC_PRODUCT * batch * heads * seqlen_q * seqlen_k * head_dim
    return flops * CAUSAL_FLOP_FACTOR if causal else float(flops)


def mode_flops(mode: str, fwd: float) -> float:
    """FLOPs of a mode given the forward's: bwd = 2.5×, fwdbwd = 3.5×."""
    return {"fwd": 1.0, "bwd": BWD_FLOP_FACTOR, "fwdbwd": 1.0 + BWD_FLOP_FACTOR}[mode] * fwd


@dataclass(frozen=True)
class Shape:
    batch: int
    seqlen: int
    heads: int
    head_dim: int

    @staticmethod
    def for_sweep(seqlen: int, head_dim: int, tokens: int, hidden: int) -> "Shape":
        return Shape(max(1, tokens // seqlen), seqlen, max(1, hidden // head_dim), head_dim)


def odd_shapes() -> tuple:
    """25 shapes: each head dim with five (heads, seqlen) pairs, rotated so every head count meets every head dim
    and every seqlen once."""
    n = len(ODD_HEADS)
    return tuple(Shape(max(1, round(ODD_TOKENS / ODD_SEQLENS[k])), ODD_SEQLENS[k], ODD_HEADS[(i + k) % n], d)
                 for i, d in enumerate(ODD_HEAD_DIMS) for k in range(n))


# ---- implementations -------------------------------------------------------------------------------
@dataclass
class Peer:
    """One implementation: call(q, k, v, causal) on (B, S, H, D) tensors -> out (B, S, H, D)."""
    name: str
    call: Optional[Callable] = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    error: Optional[str] = None  # set when the implementation is not available at all


def _sdpa_peer(name: str, backend: str) -> Peer:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if backend == "CUDNN_ATTENTION" and getattr(torch.version, "hip", None):
        return Peer(name, error="cuDNN is not part of ROCm builds of torch")
    chosen = getattr(SDPBackend, backend, None)
    if chosen is None:
        return Peer(name, error=f"this torch ({torch.__version__}) has no SDPBackend.{backend}")

    def call(q, k, v, causal):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal)
        return out.transpose(1, 2)
    # Entered once around check, warm-up and timing, so its Python cost stays out of the numbers.
    return Peer(name, call, context=lambda: sdpa_kernel([chosen]))


def _flash_attn_peer(name: str, module: str) -> Peer:
    try:
        func = __import__(module, fromlist=["flash_attn_func"]).flash_attn_func
    except Exception as exc:  # ImportError, or a broken build raising anything on import
        return Peer(name, error=f"not importable: {type(exc).__name__}: {exc}"[:ERROR_CHARS])

    def call(q, k, v, causal):
        out = func(q, k, v, causal=causal)
        return out[0] if isinstance(out, tuple) else out  # some FA3 versions return (out, lse)
    return Peer(name, call)


class _Sm90KernelAttention(torch.autograd.Function):
    """torch.ops.flashcore_sm90.fwd, and torch.ops.flashcore_sm90.bwd as its backward: the two kernels called
    directly, whatever the routing says (FLASHCORE_BACKEND decides only for the "flashcore" peer)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, deterministic: bool):
        scale = q.shape[-1] ** -0.5
        out, lse = torch.ops.flashcore_sm90.fwd(q, k, v, None, None, 0, 0, scale, causal, -1, -1, 0.0, deterministic)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.deterministic, ctx.scale = causal, deterministic, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.flashcore_sm90.bwd(dout.contiguous(), q, k, v, out, lse, None, None, None, q.shape[1],
                                                  k.shape[1], ctx.scale, ctx.causal, -1, -1, 0.0, ctx.deterministic)
        return dq, dk, dv, None, None


def _flashcore_sm90_peer(deterministic: bool = False) -> Peer:
    """The sm_90a kernels called directly (torch.ops.flashcore_sm90.fwd / .bwd). Until a GPU run proves them, the
    kernels are opt-in (FLASHCORE_BACKEND=cuda_sm90), so the "flashcore" peer may be the reference on an H100; this
    peer times the kernels whatever the routing says. "flashcore_sm90_det" runs the backward with deterministic=True
    (ordered dQ accumulation): its bwd rows next to flashcore_sm90's are the price of determinism."""
    from flashcore import _ext
    name = "flashcore_sm90_det" if deterministic else "flashcore_sm90"
    if not _ext.has_op("flashcore_sm90", "fwd"):
        return Peer(name, error="this build of the extension has no flashcore_sm90::fwd (CUDA builds only)")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return Peer(name, error="needs an sm_90 GPU (H100/H200)")
    has_bwd = _ext.has_op("flashcore_sm90", "bwd")

    def call(q, k, v, causal):
        if q.requires_grad and not has_bwd:
            raise RuntimeError("this build has no flashcore_sm90::bwd: forward only")
        return _Sm90KernelAttention.apply(q, k, v, causal, deterministic)
    return Peer(name, call)


PEERS: dict[str, Callable[[], Peer]] = {
    "flashcore": lambda: Peer("flashcore", lambda q, k, v, causal: flashcore.attention(q, k, v, causal=causal)),
    "flashcore_sm90": _flashcore_sm90_peer,
    "flashcore_sm90_det": lambda: _flashcore_sm90_peer(deterministic=True),
    "sdpa_flash": lambda: _sdpa_peer("sdpa_flash", "FLASH_ATTENTION"),
    "sdpa_cudnn": lambda: _sdpa_peer("sdpa_cudnn", "CUDNN_ATTENTION"),
    "sdpa_efficient": lambda: _sdpa_peer("sdpa_efficient", "EFFICIENT_ATTENTION"),
    "sdpa_math": lambda: _sdpa_peer("sdpa_math", "MATH"),  # materialises S: not in the GPU default
    "fa2": lambda: _flash_attn_peer("fa2", "flash_attn"),
    "fa3": lambda: _flash_attn_peer("fa3", "flash_attn_interface"),
}


def _error_text(exc: BaseException, caught: list) -> str:
    """The exception plus any warnings raised with it (SDPA explains its refusals in warnings)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    reasons = [str(w.message).strip() for w in caught]
    if reasons:
        text += " | warnings: " + " | ".join(reasons)
    return text[:ERROR_CHARS]


# ---- reference and correctness ---------------------------------------------------------------------
@contextlib.contextmanager
def _ieee_fp32():
    """float32 matmuls in full precision (no TF32) for the reference.

    torch ≥ 2.9 raises when the legacy allow_tf32 flag and the new fp32_precision one are mixed, so
    the new one is used where it exists."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    saved = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, saved)


def reference_attention(q, k, v, causal: bool):
    """softmax(q·kᵀ/√d, masked) · v in float32, (B, S, H, D) layout; causal aligned bottom-right."""
    q, k, v = q.float(), k.float(), v.float()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        rows = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        scores = scores.masked_fill(torch.arange(sk, device=q.device)[None, :] > rows, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)


def check_slice(shape: Shape) -> tuple[int, int]:
    """(batches, heads) the reference covers: all of them if small, else fewer, at least one head."""
    per_head = shape.seqlen * shape.seqlen
    heads = min(shape.heads, max(1, CHECK_MAX_SCORES // per_head))
    batches = min(shape.batch, max(1, CHECK_MAX_SCORES // (per_head * heads))) if heads == shape.heads else 1
    return batches, heads


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    """Fresh random normals (never zeros) for q, k, v, dout, and the slice the reference will cover."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)
    q, k, v, dout = (torch.randn(dims, generator=gen, device=device, dtype=dtype) for _ in range(4))
    return {"q": q, "k": k, "v": v, "dout": dout, "slice": check_slice(shape)}


def reference_for(inputs: dict, causal: bool, grads: bool) -> dict:
    b, h = inputs["slice"]
    with _ieee_fp32(), torch.enable_grad():
        leaves = [inputs[n][:b, :, :h].float().requires_grad_(grads) for n in "qkv"]
        out = reference_attention(*leaves, causal)
        ref = {"out": out.detach()}
        if grads:
            ref.update(zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, inputs["dout"][:b, :, :h].float())))
    return ref


def rel_err(x, ref) -> float:
    """‖x − ref‖ / ‖ref‖ in float32; NaN/inf propagate (and then fail the check)."""
    x = x.float()
    return float((x - ref).norm() / ref.norm().clamp_min(torch.finfo(torch.float32).tiny))


def run_check(peer: Peer, inputs: dict, ref: dict, causal: bool, mode: str, dtype: torch.dtype) -> dict:
    """Run the implementation once on the full shape and compare its slice with the reference."""
    b, h = inputs["slice"]
    grads = mode == "fwdbwd"
    leaves = [inputs[n].detach().requires_grad_(grads) for n in "qkv"]
    with torch.enable_grad() if grads else torch.no_grad():
        out = peer.call(*leaves, causal)
        got = {"out": out}
        if grads:
            got.update(zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, inputs["dout"])))
    errors = {name: rel_err(got[name][:b, :, :h], ref[name]) for name in ref if name in got}
    tol = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    passed = all(math.isfinite(e) and e <= tol for e in errors.values())
    return {"passed": passed, "rel_err": errors, "tol": tol, "slice": {"batch": b, "heads": h},
            "metric": "||x - ref|| / ||ref||, fp32 reference without TF32"}


# ---- timing ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of up to `repeats` calls after `warmup` calls (CUDA events; CPU: perf_counter)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()  # the first warm-up call, timed on the host to size the run
    _sync(device)
    first_s = time.perf_counter() - t0
    repeats = max(MIN_REPEATS, min(repeats, int(CASE_SECONDS / max(first_s, 1e-9))))
    for _ in range(max(0, warmup - 1) if first_s * warmup < CASE_SECONDS else 0):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    _sync(device)
    for start, end in events:
        start.record()
        fn()
        end.record()
    _sync(device)
    return [start.elapsed_time(end) for start, end in events]


def measure_peak(device: torch.device, dtype: torch.dtype) -> dict:
    """Median TFLOP/s of an n³ matmul on random data: the ceiling every result is a fraction of."""
    n = PEAK_N if device.type == "cuda" else CPU_PEAK_N
    gen = torch.Generator(device=device).manual_seed(SEED)
    a, b = (torch.randn(n, n, generator=gen, device=device, dtype=dtype) for _ in range(2))
    warmup, repeats = (PEAK_WARMUP, PEAK_REPEATS) if device.type == "cuda" else (1, CPU_REPEATS)
    ms = statistics.median(time_calls(lambda: torch.matmul(a, b), device, warmup, repeats))
    return {"tflops": 2 * n ** 3 / (ms * 1e-3) / 1e12, "median_ms": ms, "shape": [n, n, n], "dtype": str(dtype),
            "what": f"torch.matmul on random normals, median of {'CUDA-event' if device.type == 'cuda' else 'host'}"
                    "-timed calls"}


# ---- the sweep ---------------------------------------------------------------------------------------
@dataclass
class Config:
    device: torch.device
    dtype: torch.dtype
    tokens: int
    hidden: int
    seqlens: tuple
    head_dims: tuple
    causals: tuple
    modes: tuple
    peers: tuple
    warmup: int
    repeats: int
    time_budget_s: Optional[float]
    shapes: Optional[tuple] = None  # explicit (batch, seqlen, heads, head_dim) Shapes instead of the standard sweep


def bench_peer(peer: Peer, inputs: dict, ref: dict, shape: Shape, causal: bool, cfg: Config) -> list[dict]:
    """Rows for one implementation on one shape: each requested mode, plus the backward alone."""
    fwd = fwd_flops(shape.batch, shape.heads, shape.seqlen, shape.seqlen, shape.head_dim, causal)
    base = {"impl": peer.name, "head_dim": shape.head_dim, "seqlen": shape.seqlen, "batch": shape.batch,
            "heads": shape.heads, "causal": causal, "dtype": str(cfg.dtype).replace("torch.", "")}
    if peer.name == "flashcore":
        base["backend"] = flashcore_info(cfg.device, full=False)["backend"]
    rows = []
    for mode in cfg.modes:
        row = dict(base, mode=mode, flops=mode_flops(mode, fwd), status="unsupported", error=peer.error)
        rows.append(row)
        if peer.error:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with peer.context():
                    row["check"] = run_check(peer, inputs, ref, causal, mode, cfg.dtype)
                    fn = _timed_fn(peer, inputs, causal, mode)
                    times = time_calls(fn, cfg.device, cfg.warmup, cfg.repeats)
            except Exception as exc:  # unsupported shape, OOM, or a bug: record it, go on
                row["error"] = _error_text(exc, caught)
                _free(cfg.device)
                continue
        median = statistics.median(times)
        row.update(status="ok", error=None, median_ms=median, min_ms=min(times), repeats=len(times),
                   times_ms=[round(t, 5) for t in times])
    by_mode = {r["mode"]: r for r in rows}
    if "fwd" in by_mode and "fwdbwd" in by_mode:  # both requested: the backward alone, timed on its own
        fb = by_mode["fwdbwd"]
        row = dict(base, mode="bwd", flops=mode_flops("bwd", fwd), timed="autograd.grad of a retained graph",
                   status="unsupported", error=fb.get("error"))
        rows.append(row)
        if fb["status"] == "ok":
            row["check"] = fb.get("check")  # the fwdbwd check covered the same gradients
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with peer.context():
                        times = time_calls(_timed_fn(peer, inputs, causal, "bwd"), cfg.device, cfg.warmup,
                                           cfg.repeats)
                except Exception as exc:
                    row["error"] = _error_text(exc, caught)
                    _free(cfg.device)
                    return rows
            row.update(status="ok", error=None, median_ms=statistics.median(times), min_ms=min(times),
                       repeats=len(times), times_ms=[round(t, 5) for t in times])
    return rows


def _timed_fn(peer: Peer, inputs: dict, causal: bool, mode: str) -> Callable[[], object]:
    if mode == "fwd":
        q, k, v = (inputs[n].detach() for n in "qkv")
        return lambda: peer.call(q, k, v, causal)
    leaves = [inputs[n].detach().requires_grad_(True) for n in "qkv"]
    dout = inputs["dout"]
    if mode == "bwd":  # the forward runs once, outside the timing; each call replays the backward of its graph
        with torch.enable_grad():
            out = peer.call(*leaves, causal)
        return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)

    def step():
        with torch.enable_grad():
            return torch.autograd.grad(peer.call(*leaves, causal), leaves, dout)
    return step


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_sweep(cfg: Config, peers: list[Peer], peak_tflops: float, log=print) -> list[dict]:
    sweep = cfg.shapes or tuple(Shape.for_sweep(s, d, cfg.tokens, cfg.hidden) for d in cfg.head_dims
                                for s in cfg.seqlens)
    shapes = [(shape, c) for shape in sweep for c in cfg.causals]
    total = len(shapes) * len(peers) * (len(cfg.modes) + (len(cfg.modes) == 2))
    cases: list[dict] = []
    started = time.perf_counter()
    for index, (shape, causal) in enumerate(shapes):
        head_dim, seqlen = shape.head_dim, shape.seqlen
        if index and cfg.time_budget_s is not None and time.perf_counter() - started > cfg.time_budget_s:
            for peer in peers:
                for mode in cfg.modes + (("bwd",) if len(cfg.modes) == 2 else ()):
                    cases.append({"impl": peer.name, "mode": mode, "head_dim": head_dim, "seqlen": seqlen,
                                  "batch": shape.batch, "heads": shape.heads, "causal": causal,
                                  "status": "skipped", "error": f"--time-budget {cfg.time_budget_s:g}s spent"})
                    log(f"[{len(cases):3d}/{total}] {mode:6s} D={head_dim:<3d} S={seqlen:<5d} causal={int(causal)} "
                        f"{peer.name:14s} skipped (time budget)")
            continue
        inputs = make_inputs(shape, cfg.dtype, cfg.device, SEED + index)
        ref = reference_for(inputs, causal, grads="fwdbwd" in cfg.modes)  # fwd checks use its "out"
        for peer in peers:
            for row in bench_peer(peer, inputs, ref, shape, causal, cfg):
                if row["status"] == "ok":
                    row["tflops"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e12
                    row["frac_of_peak"] = row["tflops"] / peak_tflops
                cases.append(row)
                log(f"[{len(cases):3d}/{total}] " + progress_line(row))
        del inputs, ref
        _free(cfg.device)
    return cases


def progress_line(row: dict) -> str:
    head = (f"{row['mode']:6s} D={row['head_dim']:<3d} S={row['seqlen']:<5d} causal={int(row['causal'])} "
            f"{row['impl']:14s}")
    if row["status"] != "ok":
        return f"{head} {row['status'].upper()}: {(row.get('error') or '')[:160]}"
    check = row.get("check") or {}
    verdict = ("ok" if check.get("passed") else "WRONG") + " err " + \
        " ".join(f"{k}={v:.1e}" for k, v in check.get("rel_err", {}).items())
    return (f"{head} {row['tflops']:8.4g} TFLOP/s {row['frac_of_peak']:6.1%} of peak "
            f"{row['median_ms']:9.3f} ms  {verdict}")


# ---- GEMM: the sm_90a PTX layer's proof (flashcore_sm90::gemm, csrc/cuda/gemm_sm90.cu) vs cuBLAS -------------
GEMM_SIZES = (8192, 4096)  # M = N = K; 8192³ is where the ≥ GEMM_GOAL × cuBLAS target is judged
CPU_GEMM_SIZES = (256,)  # CPU smoke: torch.matmul only (flashcore's GEMM is an sm_90a kernel)
GEMM_WARMUP, GEMM_REPEATS = 5, 30  # median of ≥ 20 CUDA-event-timed calls after warm-up (the rule)
GEMM_GOAL = 0.85  # flashcore / torch.matmul throughput to reach at 8192³
GEMM_TOLERANCE = 1e-2  # ‖C − ref‖ / ‖ref‖ against the float32 product without TF32


def bench_gemm(device: torch.device, sizes: tuple, log=print) -> list[dict]:
    """One row per (size, impl): flashcore_sm90::gemm(a, b) = a @ b.T and torch.matmul(a, b.T) (the same
    K-major "TN" problem for cuBLAS) on the same bf16 random normals; flashcore's result checked first."""
    from flashcore import _ext

    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    ours = gpu and _ext.has_op("flashcore_sm90", "gemm")
    rows = []
    for n in sizes:
        gen = torch.Generator(device=device).manual_seed(SEED + n)
        a, b = (torch.randn(n, n, generator=gen, device=device, dtype=dtype) for _ in range(2))
        impls = {"torch.matmul": lambda: torch.matmul(a, b.t())}
        if ours:
            impls["flashcore"] = lambda: torch.ops.flashcore_sm90.gemm(a, b)
        by_impl = {}
        for name, fn in impls.items():
            row = {"impl": name, "m": n, "n": n, "k": n, "dtype": str(dtype), "flops": 2 * n ** 3, "status": "ok"}
            try:
                if name == "flashcore":
                    with _ieee_fp32():
                        ref = torch.matmul(a.float(), b.float().t())
                    err = rel_err(fn(), ref)
                    row["check"] = {"rel_err": err, "tol": GEMM_TOLERANCE, "passed": err <= GEMM_TOLERANCE}
                    del ref
                times = time_calls(fn, device, GEMM_WARMUP, GEMM_REPEATS)
                row.update(median_ms=statistics.median(times), samples=len(times))
                row["tflops"] = row["flops"] / (row["median_ms"] * 1e-3) / 1e12
            except Exception as exc:  # recorded, never fatal: the other rows still run
                row.update(status="error", error=_error_text(exc, []))
            by_impl[name] = row
            rows.append(row)
        mine, theirs = by_impl.get("flashcore"), by_impl["torch.matmul"]
        if mine is None:
            rows.append({"impl": "flashcore", "m": n, "n": n, "k": n, "status": "unsupported",
                         "error": "needs an sm_90 GPU and a CUDA build with flashcore_sm90::gemm"})
        elif mine["status"] == "ok" and theirs["status"] == "ok":
            mine["vs_torch"] = mine["tflops"] / theirs["tflops"]
            if n == max(GEMM_SIZES):
                mine["goal"] = {"vs_torch": GEMM_GOAL, "met": mine["vs_torch"] >= GEMM_GOAL}
        for row in rows[-2:]:  # this size's torch.matmul and flashcore rows
            if row["status"] != "ok":
                log(f"gemm {n}³ {row['impl']:>12}: {row['status']}: {row.get('error')}")
                continue
            versus = f"  {row['vs_torch']:.3f}x torch" if "vs_torch" in row else ""
            log(f"gemm {n}³ {row['impl']:>12}: {row['tflops']:8.1f} TFLOP/s {row['median_ms']:8.3f} ms{versus}")
        del a, b
        _free(device)
    return rows


def gemm_main(args: argparse.Namespace) -> int:
    """`--gemm`: the GEMM rows alone, written to <out>/<stem>.json (stem 'gemm' unless given)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.gemm_sizes or (GEMM_SIZES if device.type == "cuda" else CPU_GEMM_SIZES)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc = {"schema": "flashcore.bench.gemm/1", "date": date, "git": git_commit(), **environment(device),
           "settings": {"warmup": GEMM_WARMUP, "repeats": GEMM_REPEATS, "timer": "CUDA events, median",
                        "problem": "C = A @ B.T, A (M, K), B (N, K) row-major bf16, fp32 accumulation"}}
    doc["rows"] = bench_gemm(device, sizes, log=lambda s: print(s, flush=True))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{'gemm' if args.stem == 'bench' else args.stem}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    mine = [r for r in doc["rows"] if r["impl"] == "flashcore" and r["status"] != "unsupported"]
    bad = [r for r in mine if r["status"] != "ok" or not r["check"]["passed"]]
    print(f"wrote {path}; flashcore gemm: {len(mine) - len(bad)} ok, {len(bad)} failed or wrong", flush=True)
    return 1 if bad else 0


# ---- environment, output ---------------------------------------------------------------------------
def git_commit() -> dict:
    """HEAD of the checkout holding this file (or FLASHCORE_GIT_COMMIT, for copies without .git)."""
    root = Path(__file__).resolve().parent.parent
    info = {"commit": os.environ.get("FLASHCORE_GIT_COMMIT"), "dirty": None}
    if info["commit"]:
        return info
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            info["dirty"] = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = {"type": "cuda", "vendor": "amd" if getattr(torch.version, "hip", None) else "nvidia",
               "name": props.name, "capability": list(torch.cuda.get_device_capability(device)),
               "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
        if getattr(props, "gcnArchName", None):
            dev["arch"] = props.gcnArchName
    else:
        dev = {"type": "cpu", "vendor": "cpu", "name": platform.processor() or platform.machine(),
               "cores": os.cpu_count()}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "hip": getattr(torch.version, "hip", None), "flashcore": getattr(flashcore, "__version__", None)}
    try:
        versions["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # no cuDNN in this build
        versions["cudnn"] = None
    for name in ("flash_attn", "flash_attn_interface"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "importable")
        except Exception:
            versions[name] = None
    return {"device": dev, "versions": versions}


def flashcore_info(device: torch.device, full: bool = True) -> dict:
    try:
        return {"backend": flashcore.backend(device), "info": flashcore.info() if full else None}
    except Exception as exc:  # a half-built package must not stop the benchmark
        return {"backend": None, "info": None, "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}


def default_stem(doc: dict) -> str:
    """`<date>_<device>_<commit>`, the naming of bench/results/ (README.md there)."""
    name = "".join(c if c.isalnum() else "-" for c in doc["device"]["name"]).strip("-").lower()
    commit = (doc["git"]["commit"] or "nocommit")[:10] + ("-dirty" if doc["git"]["dirty"] else "")
    odd = "_odd" if (doc.get("settings") or {}).get("sweep") == "odd_shapes" else ""
    return f"{doc['date'][:10]}_{'-'.join(filter(None, name.split('-')))}_{commit}{odd}"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [c for c in doc["cases"] if c["status"] == "ok"]
    modes = [m for m in ("fwd", "fwdbwd", "bwd") if any(c["mode"] == m for c in ok)] or ["fwd"]
    panels = sorted({(c["head_dim"], c["causal"]) for c in ok}) or [(0, False)]
    peak = doc["peak"]["tflops"]
    fig, axes = plt.subplots(len(modes), len(panels), figsize=(3.6 * len(panels), 3.0 * len(modes) + 1.0),
                             squeeze=False, sharex=True, sharey="row")  # one y scale per mode: panels compare
    seqlens = sorted({c["seqlen"] for c in ok})
    impls = sorted({c["impl"] for c in ok})
    for i, mode in enumerate(modes):
        for j, (head_dim, causal) in enumerate(panels):
            ax = axes[i][j]
            for impl in impls:
                key = (impl, mode, head_dim, causal)
                pts = sorted((c["seqlen"], c["tflops"]) for c in ok
                             if (c["impl"], c["mode"], c["head_dim"], c["causal"]) == key)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_xticks(seqlens, [f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n) for n in seqlens])
            ax.minorticks_off()
            ax.set_title(f"{mode} D={head_dim} {'causal' if causal else 'non-causal'}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("TFLOP/s")
            if j == len(panels) - 1:
                sec = ax.secondary_yaxis("right", functions=(lambda x: x / peak, lambda f: f * peak))
                sec.set_ylabel("fraction of peak")
            if i == len(modes) - 1:
                ax.set_xlabel("seqlen")
    handles, labels = axes[0][0].get_legend_handles_labels()
    top = 1 - 0.8 / fig.get_figheight()  # inches kept free above the panels for title and legend
    commit = (doc["git"]["commit"] or "")[:10]
    title = f"{doc['device']['name']} · peak {peak:.3g} TFLOP/s · {doc['date'][:10]} · {commit}"
    if doc["device"]["type"] == "cpu":
        title += "\nCPU SMOKE RUN: THESE NUMBERS MEAN NOTHING"
    fig.suptitle(title, fontsize=10, y=0.995)
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, top), ncol=len(labels), fontsize=9,
                   frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- CLI -------------------------------------------------------------------------------------------
def _ints(text: str) -> tuple:
    """'512,1k,16k' -> (512, 1024, 16384)."""
    parse = lambda t: int(t[:-1]) * 1024 if t.lower().endswith("k") else int(t)
    return tuple(parse(t.strip()) for t in text.split(",") if t.strip())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flashcore.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out", help="directory for <stem>.json and <stem>.png (default bench/out)")
    p.add_argument("--stem", default="bench", help="file name stem; 'auto' = <date>_<device>_<commit>")
    p.add_argument("--quick", action="store_true", help=f"seqlens {QUICK_SEQLENS}, {QUICK_REPEATS} repeats")
    p.add_argument("--head-dims", type=_ints, help="comma list, e.g. 64,128")
    p.add_argument("--seqlens", type=_ints, help="comma list, e.g. 512,1k,16k")
    p.add_argument("--causal", choices=("0", "1", "both"), default="both")
    p.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both",
                   help="'both' also reports bwd = fwdbwd - fwd")
    p.add_argument("--peers", help=f"comma list of {','.join(PEERS)} (GPU default: {','.join(GPU_PEERS)})")
    p.add_argument("--json-only", action="store_true", help="skip the PNG")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--tokens", type=int, help=f"batch·seqlen (default {TOKENS}; CPU {CPU_TOKENS})")
    p.add_argument("--hidden", type=int, help=f"heads·head_dim (default {HIDDEN}; CPU {CPU_HIDDEN})")
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--gemm", action="store_true",
                   help=f"instead of the sweep: flashcore_sm90::gemm vs torch.matmul at {GEMM_SIZES} (JSON only)")
    p.add_argument("--gemm-sizes", type=_ints, help="with --gemm: comma list of M = N = K")
    p.add_argument("--bwd-op", action="store_true",
                   help="instead of the sweep: the sm_90a backward op alone (and deterministic) vs SDPA flash / "
                        "cuDNN backward on the sweep's shapes (flashcore/bench_bwd.py; JSON only)")
    p.add_argument("--odd-shapes", action="store_true",
                   help="instead of the standard sweep: head dims 64-256 x heads 12-40 x seqlens off the 128 grid "
                        "(flashcore only unless --peers), the shapes `python -m flashcore.advise --validate` reads")
    p.add_argument("--time-budget", type=float,
                   help="seconds; shapes not started by then are recorded as skipped (the first always runs)")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or
                                                                                  ("bf16" if gpu else "fp32")]
    # odd shapes: flashcore, and any peer calling one of our kernel libraries directly (flashcore_<arch>)
    odd_peers = ("flashcore",) + tuple(n for n in PEERS if n.startswith("flashcore_") and not n.endswith("_det")) \
        if gpu else ("flashcore",)  # the deterministic variant is not an advisor measurement
    default_peers = odd_peers if args.odd_shapes else (GPU_PEERS if gpu else CPU_PEERS)
    names = tuple(n.strip() for n in args.peers.split(",")) if args.peers else default_peers
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; known: {', '.join(PEERS)}")
    warmup, repeats = ((QUICK_WARMUP, QUICK_REPEATS) if args.quick else (GPU_WARMUP, GPU_REPEATS)) if gpu \
        else (CPU_WARMUP, CPU_REPEATS)
    return Config(
        device=device, dtype=dtype,
        tokens=args.tokens or (TOKENS if gpu else CPU_TOKENS), hidden=args.hidden or (HIDDEN if gpu else CPU_HIDDEN),
        seqlens=args.seqlens or ((QUICK_SEQLENS if args.quick else SEQLENS) if gpu else CPU_SEQLENS),
        head_dims=args.head_dims or (HEAD_DIMS if gpu else CPU_HEAD_DIMS),
        causals={"0": (False,), "1": (True,), "both": (False, True)}[args.causal],
        modes=MODES if args.mode == "both" else (args.mode,), peers=names,
        warmup=args.warmup if args.warmup is not None else warmup, repeats=args.repeats or repeats,
        time_budget_s=args.time_budget,
        shapes=(odd_shapes() if gpu else tuple(Shape(*s) for s in CPU_ODD_SHAPES)) if args.odd_shapes else None)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.gemm:
        return gemm_main(args)
    if args.bwd_op:
        from .bench_bwd import main as bwd_op_main
        return bwd_op_main(args)
    cfg = make_config(args)
    cpu = cfg.device.type != "cuda"
    cpu_warning = "CPU smoke run: these numbers mean nothing; it only exercises the benchmark code."
    if cpu:
        print(f"*** {cpu_warning} ***", flush=True)
    doc = {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git": git_commit(), **environment(cfg.device), "flashcore": flashcore_info(cfg.device)}
    print(f"device {doc['device']['name']} | torch {torch.__version__} | flashcore backend "
          f"{doc['flashcore']['backend']} | commit {doc['git']['commit']}", flush=True)
    peak = measure_peak(cfg.device, torch.bfloat16 if not cpu else torch.float32)
    print(f"peak {peak['tflops']:.1f} TFLOP/s ({'x'.join(map(str, peak['shape']))} {peak['dtype']} matmul)", flush=True)
    peers = [PEERS[name]() for name in cfg.peers]
    doc.update(
        peak=peak,
        settings={"dtype": str(cfg.dtype), "tokens": cfg.tokens, "hidden": cfg.hidden, "seqlens": list(cfg.seqlens),
                  "head_dims": list(cfg.head_dims), "causal": list(cfg.causals), "modes": list(cfg.modes),
                  "peers": list(cfg.peers), "warmup": cfg.warmup, "repeats": cfg.repeats, "quick": args.quick,
                  "sweep": "odd_shapes" if cfg.shapes else "standard",
                  "shapes": [[x.batch, x.seqlen, x.heads, x.head_dim] for x in cfg.shapes or ()],
                  "case_seconds": CASE_SECONDS, "time_budget_s": cfg.time_budget_s,
                  "timer": "time.perf_counter" if cpu else "CUDA events, one pair per call, median",
                  "layout": "inputs (B,S,H,D); SDPA gets transpose views, its layout copies are timed",
                  "flops": "fwd 4*B*H*Sq*Sk*D (x0.5 causal); bwd 2.5x fwd; fwdbwd 3.5x fwd; "
                           "bwd time = fwdbwd median - fwd median"},
        peers={p.name: {"available": p.error is None, "error": p.error} for p in peers},
        notes=[cpu_warning] if cpu else [])
    start = time.perf_counter()
    doc["cases"] = run_sweep(cfg, peers, peak["tflops"], log=lambda s: print(s, flush=True))
    doc["elapsed_s"] = round(time.perf_counter() - start, 1)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = default_stem(doc) if args.stem == "auto" else args.stem
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    written = [out_dir / f"{stem}.json"]
    if not args.json_only:
        plot(doc, out_dir / f"{stem}.png")
        written.append(out_dir / f"{stem}.png")
    mine = [c for c in doc["cases"] if c["impl"] == "flashcore" and c["status"] != "skipped"]
    bad = [c for c in mine if c["status"] != "ok" or not (c.get("check") or {}).get("passed")]
    print(f"wrote {', '.join(map(str, written))} in {doc['elapsed_s']}s; flashcore: {len(mine) - len(bad)} ok, "
          f"{len(bad)} failed or wrong", flush=True)
    if cpu:
        print(f"*** {cpu_warning} ***", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
