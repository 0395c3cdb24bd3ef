"""`python -m flashcore.bench --bwd-op`: the sm_90a attention backward kernel timed on its own, next to the
backward of SDPA's flash and cuDNN backends, on the sweep's shapes (batch·seqlen = 16k, heads·head_dim = 2048).

Why a separate mode: the sweep's "bwd" rows are fwd+bwd minus fwd of one implementation, so flashcore's need a
CUDA forward kernel as well. Here every implementation starts from the same forward result and only the backward
is timed:
- flashcore / flashcore_det: torch.ops.flashcore_sm90.bwd (preprocess + main kernel + dQ convert), deterministic
  False / True, given out and lse from SDPA's flash forward (aten._scaled_dot_product_flash_attention);
- sdpa_flash / sdpa_cudnn: torch.autograd.grad through the graph of one SDPA forward (retain_graph), i.e. the
  backend's own backward on the (B, H, S, D) transpose views of the same tensors.
FLOPs = 2.5 x the forward's (5 GEMMs of the forward's size instead of 2). Each flashcore result is first compared
with sdpa_flash's gradients (||x - ref|| / ||ref|| <= 2e-2 for bf16) and not timed when wrong.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _ext
from .bench import (BWD_FLOP_FACTOR, GPU_REPEATS, GPU_WARMUP, HEAD_DIMS, HIDDEN, QUICK_REPEATS, QUICK_SEQLENS,
                    QUICK_WARMUP, SEED, SEQLENS, TOKENS, TOLERANCE, Shape, environment, fwd_flops, git_commit,
                    rel_err, time_calls)

SCHEMA = "flashcore.bench.bwd_op/1"
IMPLS = ("flashcore", "flashcore_det", "sdpa_flash", "sdpa_cudnn")


def _sdpa_backward(backend_name: str, q, k, v, dout, causal: bool):
    """A callable running only the backward of one SDPA forward (the graph is kept between calls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    leaves = [t.detach().transpose(1, 2).requires_grad_(True) for t in (q, k, v)]
    with sdpa_kernel([getattr(SDPBackend, backend_name)]):
        out = F.scaled_dot_product_attention(*leaves, is_causal=causal)
    grad_out = dout.transpose(1, 2)
    return lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True)


def bench_shape(shape: Shape, causal: bool, quick: bool, log=print) -> list[dict]:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(SEED)
    dims = (shape.batch, shape.seqlen, shape.heads, shape.head_dim)
    q, k, v, dout = (torch.randn(dims, generator=gen, device=dev, dtype=torch.bfloat16) for _ in range(4))
    scale = shape.head_dim ** -0.5
    out_t, lse = torch.ops.aten._scaled_dot_product_flash_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                    v.transpose(1, 2), is_causal=causal,
                                                                    scale=scale)[:2]
    out = out_t.transpose(1, 2).contiguous()
    fwd = fwd_flops(shape.batch, shape.heads, shape.seqlen, shape.seqlen, shape.head_dim, causal)
    warmup, repeats = (QUICK_WARMUP, QUICK_REPEATS) if quick else (GPU_WARMUP, GPU_REPEATS)
    calls = {
        "sdpa_flash": lambda: _sdpa_backward("FLASH_ATTENTION", q, k, v, dout, causal),
        "sdpa_cudnn": lambda: _sdpa_backward("CUDNN_ATTENTION", q, k, v, dout, causal),
    }
    for name, det in (("flashcore", False), ("flashcore_det", True)):
        calls[name] = (lambda det=det: lambda: torch.ops.flashcore_sm90.bwd(
            dout, q, k, v, out, lse, None, None, None, shape.seqlen, shape.seqlen, scale, causal, -1,
            0 if causal else -1, 0.0, det))
    rows, ref = [], None
    for impl in ("sdpa_flash", "sdpa_cudnn", "flashcore", "flashcore_det"):
        row = {"impl": impl, "head_dim": shape.head_dim, "seqlen": shape.seqlen, "batch": shape.batch,
               "heads": shape.heads, "causal": causal, "flops": BWD_FLOP_FACTOR * fwd}
        try:
            if impl.startswith("flashcore") and not _ext.has_op("flashcore_sm90", "bwd"):
                raise RuntimeError("this build has no flashcore_sm90::bwd")
            fn = calls[impl]()
            grads = [g.transpose(1, 2) if impl.startswith("sdpa") else g for g in fn()]
            if impl == "sdpa_flash":
                ref = [g.float() for g in grads]
            elif impl.startswith("flashcore") and ref is not None:
                errors = {n: rel_err(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, ref)}
                row["rel_err_vs_sdpa_flash"] = errors
                if not all(e <= TOLERANCE[torch.bfloat16] for e in errors.values()):
                    raise RuntimeError(f"wrong gradients vs sdpa_flash: {errors}")
            ms = statistics.median(time_calls(fn, dev, warmup, repeats))
            row.update(status="ok", median_ms=ms, tflops=row["flops"] / (ms * 1e-3) / 1e12)
            log(f"bwd D={shape.head_dim:<3d} S={shape.seqlen:<5d} causal={int(causal)} {impl:14s} "
                f"{row['tflops']:7.1f} TFLOP/s {ms:8.3f} ms")
        except Exception as exc:  # a peer missing on this machine, or our kernel failing: recorded, not fatal
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:400])
            log(f"bwd D={shape.head_dim:<3d} S={shape.seqlen:<5d} causal={int(causal)} {impl:14s} {row['error']}")
        rows.append(row)
    del q, k, v, dout, out, lse, calls
    torch.cuda.empty_cache()
    return rows


def main(args) -> int:
    if not torch.cuda.is_available():
        print("--bwd-op needs a CUDA GPU (it times torch.ops.flashcore_sm90.bwd)")
        return 1
    seqlens = args.seqlens or (QUICK_SEQLENS if args.quick else SEQLENS)
    head_dims = args.head_dims or HEAD_DIMS
    causals = {"0": (False,), "1": (True,), "both": (False, True)}[args.causal]
    doc = {"schema": SCHEMA, "git": git_commit(), **environment(torch.device("cuda")),
           "what": __doc__.split("\n\n")[1], "rows": []}
    for head_dim in head_dims:
        for seqlen in seqlens:
            for causal in causals:
                shape = Shape.for_sweep(seqlen, head_dim, TOKENS, HIDDEN)
                doc["rows"] += bench_shape(shape, causal, args.quick, log=lambda s: print(s, flush=True))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{'bwd_op' if args.stem == 'bench' else args.stem}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    mine = [r for r in doc["rows"] if r["impl"].startswith("flashcore")]
    bad = [r for r in mine if r["status"] != "ok"]
    print(f"wrote {path}; flashcore bwd: {len(mine) - len(bad)} ok, {len(bad)} failed or wrong", flush=True)
    return 1 if bad else 0
