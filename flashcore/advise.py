"""Shape advisor: what an attention shape costs on flashcore's kernels, and nearby shapes that cost less.

    python -m flashcore.advise --gpu h100 --batch 8 --seqlen 4096 --heads 32 --kv-heads 8 --head-dim 128 --causal
    result = flashcore.advise(gpu="mi300x", batch=8, seqlen=4096, heads=32, kv_heads=8, head_dim=128)

From each kernel's tile table (csrc/tiles/*.h, parsed by flashcore._tiles) the model counts, forward and
backward: the tiles (work units: query tiles for the forward, K/V blocks for the backward, per head and
sequence), how many waves of them the SMs/CUs run and how full the last wave is, the tile area spent on rows and
keys past the sequence end (padding) and on masked scores of diagonal tiles (causal), how unequal the tiles'
work is (causal) and what the kernel's scheduler makes of it (a list-scheduling simulation), and what GQA's
sharing of K/V saves in memory traffic. Time = max(compute, memory) + a launch overhead (+ the backward's
preprocess and dQ postprocess), where compute comes
from the simulated schedule at (peak dense bf16 per SM/CU) x (kernel efficiency). The efficiency is measured
(bench/results/, `calibration`) or, until measurements exist, an assumption named in ASSUMED_EFFICIENCY; the
result says which ("uncalibrated: ...").

What the model leaves out (read before trusting a number): clocks under power limits, L2 misses beyond the
working-set estimate, per-head-dim register spills, the backward's preprocess and dQ postprocess kernels, and
anything a kernel's scheduler does that SCHEDULERS does not name. Its purpose is ranking shapes, and saying
where the waste comes from; `validate` measures how well it ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from . import _tiles
from ._advise_model import GPUS, KERNELS, Calibration, Shape, calibrate, predict_kernel, spearman, validate

__all__ = ["advise", "Advice", "Suggestion", "GPUS", "Shape", "spearman", "validate", "calibrate"]

# ---- suggestions --------------------------------------------------------------------------------------
DEFAULT_TOLERANCE = 0.10  # parameter budget kept within ±10%: a model change small enough to be "nearby"
MIN_GAIN = 0.01  # below a 1% predicted gain the model cannot tell a suggestion from noise
MAX_SUGGESTIONS = 5  # a short list a person reads; --json carries the same five
PLOT_POINTS = 24  # head counts plotted at most: each point is a full prediction (a schedule simulation)


@dataclass
class Suggestion:
    shape: Shape
    change: str  # what differs from the user's shape, in words
    predicted_tflops: float  # fwd+bwd (or fwd alone when no backward table) by the FLOP convention
    gain: float  # predicted_tflops / the user's - 1
    time_change: float  # predicted time (fwd+bwd, or fwd) / the user's - 1: the work itself changes too
    budget: dict  # q/o width heads*head_dim and k/v width kv_heads*head_dim, before -> after


@dataclass
class Advice:
    """Everything the advisor predicts for one shape on one GPU (JSON-serialisable via `to_dict`)."""
    gpu: str
    gpu_spec: dict
    shape: Shape
    calibration: Calibration
    kernels: dict  # "fwd"/"bwd" -> KernelPrediction, or None when that kernel's table is missing
    missing: dict  # "fwd"/"bwd" -> the message saying which table is absent
    training_tflops: Optional[float]  # fwd+bwd by the convention, None without both tables
    suggestions: list = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    assumptions: list = field(default_factory=list)
    tiles_dir: Optional[str] = None  # the directory the tables were read from

    def to_dict(self) -> dict:
        return asdict(self)


def _kernel_predictions(gpu: str, shape: Shape, calib: Calibration, tiles_dir=None) -> tuple[dict, dict]:
    arch = GPUS[gpu].arch
    kernels, missing = {}, {}
    for mode in ("fwd", "bwd"):
        spec = KERNELS[(arch, mode)]
        try:
            table = _tiles.load(spec.file, spec.label, spec.columns, tiles_dir)
        except _tiles.TileTableMissing as exc:
            kernels[mode], missing[mode] = None, str(exc)
            continue
        kernels[mode] = predict_kernel(GPUS[gpu], spec, table, shape, calib)
    return kernels, missing


def _training_tflops(kernels: dict) -> Optional[float]:
    fwd, bwd = kernels.get("fwd"), kernels.get("bwd")
    if fwd is None or bwd is None:
        return None
    return (fwd.flops + bwd.flops) / ((fwd.time_us + bwd.time_us) * 1e-6) / 1e12


def _score(kernels: dict) -> tuple[float, float]:
    """(TFLOP/s, time in us) of what suggestions raise: fwd+bwd when both kernels exist, else the one that does."""
    present = [k for k in kernels.values() if k is not None]
    flops, time_us = sum(k.flops for k in present), sum(k.time_us for k in present)
    return flops / (time_us * 1e-6) / 1e12, time_us


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return value


def advise(gpu: str, *, heads: int, batch: int = 1, seqlen: Optional[int] = None,
           kv_heads: Optional[int] = None, head_dim: int = 128, causal: bool = False,
           varlen_lengths: Optional[Sequence[int]] = None, tolerance: float = DEFAULT_TOLERANCE,
           suggest: bool = True, results_dir=None, tiles_dir=None) -> Advice:
    """Predict the forward and backward kernels' behaviour on one attention shape.

    Args:
        gpu: "h100", "h200" or "mi300x".
        batch, seqlen: sequences and their length (seqlen_q = seqlen_k); ignored batch/seqlen with varlen_lengths.
        heads, kv_heads: query heads and K/V heads (heads % kv_heads == 0; default kv_heads = heads).
        head_dim: one of the kernel's head dims (the tile table lists them).
        causal: causal mask (square, so it halves the work).
        varlen_lengths: per-sequence lengths of a packed (varlen) batch instead of batch x seqlen.
        tolerance: suggestions keep heads*head_dim and kv_heads*head_dim within this fraction of yours.
        results_dir: where bench JSON lives for calibration (default: bench/results of the checkout).
        tiles_dir: where the tile tables live (default: flashcore._tiles.tiles_dir()).

    Returns an Advice: per kernel ("fwd", "bwd") a KernelPrediction (tiles, waves, last-wave fill, padding and
    mask waste, schedule efficiency, GQA reuse, bound, time, TFLOP/s, fractions of peak), the calibration state,
    the fwd+bwd TFLOP/s, and the suggestions (Suggestion: shape, change, predicted TFLOP/s, gain, time change,
    budget before/after). Raises ValueError for bad arguments, and flashcore._tiles.TileTableMissing when neither the
    forward nor the backward table of that GPU's kernels is in this build.
    """
    if gpu not in GPUS:
        raise ValueError(f"gpu: expected one of {', '.join(GPUS)}, got {gpu!r}")
    heads = _check_int("heads", heads)
    kv_heads = heads if kv_heads is None else _check_int("kv_heads", kv_heads)
    if heads % kv_heads:
        raise ValueError(f"kv_heads: {kv_heads} must divide heads ({heads}): each K/V head serves a whole group")
    head_dim = _check_int("head_dim", head_dim)
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance: expected a fraction in [0, 1), got {tolerance!r}")
    if varlen_lengths is not None:
        lengths = tuple(varlen_lengths)
        if not lengths:
            raise ValueError("varlen_lengths: expected at least one sequence length, got none")
        for i, n in enumerate(lengths):
            _check_int(f"varlen_lengths[{i}]", n)
        shape = Shape(batch=len(lengths), seqlen=max(lengths), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                      causal=bool(causal), lengths=lengths)
    else:
        if seqlen is None:
            raise ValueError("seqlen: required unless varlen_lengths is given")
        shape = Shape(batch=_check_int("batch", batch), seqlen=_check_int("seqlen", seqlen), heads=heads,
                      kv_heads=kv_heads, head_dim=head_dim, causal=bool(causal))
    calib = calibrate(gpu, results_dir, tiles_dir=tiles_dir)
    kernels, missing = _kernel_predictions(gpu, shape, calib, tiles_dir)
    if all(k is None for k in kernels.values()):
        raise _tiles.TileTableMissing("; ".join(missing.values()))
    advice = Advice(gpu=gpu, gpu_spec=asdict(GPUS[gpu]), shape=shape, calibration=calib, kernels=kernels,
                    missing=missing, training_tflops=_training_tflops(kernels), tolerance=tolerance,
                    assumptions=_assumptions(gpu, kernels), tiles_dir=str(_tiles.tiles_dir(tiles_dir)))
    if suggest:
        advice.suggestions = suggestions(advice)
    return advice


def _assumptions(gpu: str, kernels: dict) -> list:
    from . import _advise_model as m
    notes = [f"{GPUS[gpu].name}: {GPUS[gpu].source}"]
    for mode, k in kernels.items():
        if k is not None:
            notes.append(f"{mode}: scheduler = {KERNELS[(GPUS[gpu].arch, mode)].scheduler_note}")
    notes += [m.OVERHEAD_NOTE, m.MEMORY_NOTE, m.AUX_NOTE, "FLOPs: " + m.FLOP_NOTE,
              "efficiency: " + "; ".join(f"{a}/{md}: {src}" for (a, md), src in m.ASSUMED_SOURCE.items()
                                         if a == GPUS[gpu].arch)]
    return notes


# ---- suggestions --------------------------------------------------------------------------------------
def _budget(shape: Shape) -> dict:
    return {"q_o_width": shape.heads * shape.head_dim, "k_v_width": shape.kv_heads * shape.head_dim}


def _within(value: int, target: int, tolerance: float) -> bool:
    return abs(value - target) <= tolerance * target + 1e-9


def _head_candidates(shape: Shape, head_dims: Sequence[int], tolerance: float):
    """(heads, kv_heads, head_dim) keeping each width within tolerance; kv_heads divides heads."""
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    for d in head_dims:
        for h in range(max(1, math.ceil(q_width * (1 - tolerance) / d)), math.floor(q_width * (1 + tolerance) / d) + 1):
            if not _within(h * d, q_width, tolerance):
                continue
            for kv in range(1, h + 1):
                if h % kv == 0 and _within(kv * d, kv_width, tolerance):
                    yield h, kv, d


def _seqlen_candidates(shape: Shape, align: int, tolerance: float):
    """(batch, seqlen): the tile multiples just below and above the user's seqlen and the nearest power of two;
    each with the same batch, and with the batch that keeps batch*seqlen tokens (packing)."""
    s = shape.seqlen
    for cand in sorted({s // align * align, -(-s // align) * align, 2 ** round(math.log2(s))}):
        if cand <= 0 or cand == s or not _within(cand, s, tolerance):
            continue
        yield shape.batch, cand
        packed = round(shape.batch * s / cand)
        if packed >= 1 and packed != shape.batch and _within(packed * cand, shape.batch * s, tolerance):
            yield packed, cand


def suggestions(advice: Advice) -> list:
    """Nearby shapes ranked by predicted gain (see the module docstring and README for the budget rule)."""
    shape, tol = advice.shape, advice.tolerance
    present = [k for k in advice.kernels.values() if k is not None]
    head_dims = sorted(set.intersection(*(set(k.table_head_dims) for k in present)))
    base, base_us = _score(advice.kernels)
    seen, out = {(shape.heads, shape.kv_heads, shape.head_dim, shape.batch, shape.seqlen)}, []

    def consider(cand: Shape, change: str) -> None:
        key = (cand.heads, cand.kv_heads, cand.head_dim, cand.batch, cand.seqlen)
        if key in seen:
            return
        seen.add(key)
        kernels, _ = _kernel_predictions(advice.gpu, cand, advice.calibration, advice.tiles_dir)
        score, time_us = _score(kernels)
        if score / base - 1 >= MIN_GAIN:
            out.append(Suggestion(shape=cand, change=change, predicted_tflops=score, gain=score / base - 1,
                                  time_change=time_us / base_us - 1,
                                  budget={"before": _budget(shape), "after": _budget(cand)}))

    for h, kv, d in _head_candidates(shape, head_dims, tol):
        parts = [f"{name} {old}->{new}" for name, old, new in
                 (("heads", shape.heads, h), ("kv_heads", shape.kv_heads, kv), ("head_dim", shape.head_dim, d))
                 if old != new]
        if parts:
            consider(_replace(shape, heads=h, kv_heads=kv, head_dim=d), ", ".join(parts))
    if shape.lengths is None:
        align = math.lcm(*(k.align for k in present))
        for b, s in _seqlen_candidates(shape, align, tol):
            what = f"seqlen {shape.seqlen}->{s}" + (f", batch {shape.batch}->{b} (same tokens: pack sequences)"
                                                    if b != shape.batch else "")
            consider(_replace(shape, batch=b, seqlen=s), what)
    out.sort(key=lambda s: -s.gain)
    return out[:MAX_SUGGESTIONS]


def _replace(shape: Shape, **changes) -> Shape:
    return Shape(**{**asdict(shape), **changes})


# ---- output ---------------------------------------------------------------------------------------------
def format_table(advice: Advice) -> str:
    s, g = advice.shape, GPUS[advice.gpu]
    what = (f"varlen {s.batch} sequences (max {s.seqlen}, mean {sum(s.lengths) / s.batch:.0f})" if s.lengths
            else f"batch {s.batch} x seqlen {s.seqlen}")
    lines = [f"{g.name}: {what}, heads {s.heads}, kv_heads {s.kv_heads}, head_dim {s.head_dim}"
             f"{', causal' if s.causal else ''}", advice.calibration.status, ""]
    present = {m: k for m, k in advice.kernels.items() if k is not None}
    rows = [
        ("tile (block_m x block_n)", lambda k: f"{k.block_m} x {k.block_n}"),
        ("tiles (work units)", lambda k: f"{k.units}"),
        (f"slots ({g.unit_name}s x per {g.unit_name})", lambda k: f"{k.slots} ({g.units} x {k.slots_per_unit})"),
        ("waves / last wave fill", lambda k: f"{k.waves:.2f} / {k.last_wave_fill:.0%}"),
        ("padding waste", lambda k: f"{k.padding_waste:.1%}"),
        ("causal mask waste", lambda k: f"{k.mask_waste:.1%}"),
        ("tile work max/mean", lambda k: f"{k.work_imbalance:.2f}"),
        ("schedule efficiency", lambda k: f"{k.schedule_efficiency:.1%}"),
        ("  longest-first would be", lambda k: f"{k.longest_first_efficiency:.1%}"),
        ("K/V reuse (GQA group)", lambda k: f"{k.gqa_group}x, L2 set {k.l2_working_set_mb:.0f} MB "
                                            f"{'fits' if k.l2_fits else 'spills'}"),
        ("bound", lambda k: k.bound),
        ("kernel efficiency", lambda k: f"{k.efficiency:.0%} ({k.efficiency_source})"),
        ("predicted time", lambda k: f"{k.time_us / 1000:.3f} ms"),
        ("predicted TFLOP/s", lambda k: f"{k.tflops:.0f}"),
        ("of kernel peak / of GPU peak", lambda k: f"{k.frac_of_kernel_peak:.0%} / {k.frac_of_gpu_peak:.0%}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines.append(f"{'':{width}}  " + "  ".join(f"{m:>26}" for m in present))
    for label, fmt in rows:
        lines.append(f"{label:{width}}  " + "  ".join(f"{fmt(k):>26}" for k in present.values()))
    for msg in advice.missing.values():
        lines.append(f"({msg})")
    if advice.training_tflops is not None:
        lines.append(f"fwd+bwd: {advice.training_tflops:.0f} TFLOP/s predicted")
    lines.append("")
    if advice.suggestions:
        lines.append(f"nearby shapes (q/o width heads*head_dim and k/v width kv_heads*head_dim within "
                     f"±{advice.tolerance:.0%}), by predicted TFLOP/s gain (time: the shape's own work changes too):")
        for sug in advice.suggestions:
            lines.append(f"  {sug.gain:+6.1%}  {sug.change}  ({sug.predicted_tflops:.0f} TFLOP/s, "
                         f"time {sug.time_change:+.1%})")
    else:
        lines.append(f"no nearby shape (±{advice.tolerance:.0%} budget) is predicted faster by {MIN_GAIN:.0%} or more")
    lines += ["", "model assumptions:"] + [f"  - {note}" for note in advice.assumptions]
    return "\n".join(lines)


def plot(advice: Advice, path) -> None:
    """PNG: predicted TFLOP/s across seqlen (batch fixed) and across head count, the user's shape marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = advice.shape
    base = _replace(s, lengths=None)
    group = s.heads // s.kv_heads
    seqlens = sorted({max(1, round(s.seqlen * 2 ** (e / 4))) for e in range(-8, 5)} | {s.seqlen})  # S/4 ... 2S
    heads = [h for h in range(max(group, s.heads // 2), 2 * s.heads + 1) if h % group == 0]  # heads/2 ... 2 heads
    heads = sorted(set(heads[:: max(1, len(heads) // PLOT_POINTS)]) | {s.heads})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, xs, make, label, mark in (
            (axes[0], seqlens, lambda x: _replace(base, seqlen=x), "seqlen", s.seqlen),
            (axes[1], sorted(set(heads)), lambda x: _replace(base, heads=x, kv_heads=x // group), "heads", s.heads)):
        curves: dict = {}
        for x in xs:
            kernels, _ = _kernel_predictions(advice.gpu, make(x), advice.calibration, advice.tiles_dir)
            for mode, k in kernels.items():
                if k is not None:
                    curves.setdefault(mode, []).append((x, k.tflops))
        for mode, pts in curves.items():
            ax.plot(*zip(*pts), marker=".", label=mode)
            mine = dict(pts).get(mark)
            if mine is not None:
                ax.plot([mark], [mine], marker="*", markersize=14, color="red", zorder=5)
        if label == "seqlen":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label + (" (batch fixed)" if label == "seqlen" else f" (kv_heads = heads/{group})"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("predicted TFLOP/s")
    fig.suptitle(f"{GPUS[advice.gpu].name} · batch {s.batch} seqlen {s.seqlen} heads {s.heads}/{s.kv_heads} "
                 f"D={s.head_dim}{' causal' if s.causal else ''} (★ yours)\n{advice.calibration.status}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_lengths(path) -> list:
    """Sequence lengths from a file: a JSON list, or one integer per line (blank lines and # comments skipped)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        values = json.loads(text)
    else:
        values = [line.split("#")[0].strip() for line in text.splitlines()]
        values = [v for v in values if v]
    try:
        lengths = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"--varlen-lengths: {path} must hold integers (a JSON list or one per line)") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--varlen-lengths: {path} must hold at least one length, each >= 1")
    return lengths


def _json_default(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashcore.advise", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", choices=tuple(GPUS), help="default h100 (--validate: the bench file's device)")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--seqlen", type=int, help="tokens per sequence, seqlen_q = seqlen_k")
    p.add_argument("--heads", type=int, help="query heads (required)")
    p.add_argument("--kv-heads", type=int, help="K/V heads, dividing --heads (default: --heads)")
    p.add_argument("--head-dim", type=int, default=128, help="one of the kernels' head dims (default 128)")
    p.add_argument("--causal", action="store_true", help="causal mask")
    p.add_argument("--varlen-lengths", metavar="FILE", help="sequence lengths: JSON list or one per line")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="suggestions keep heads*head_dim and kv_heads*head_dim within this fraction (default 0.1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--png", metavar="PATH", help="plot predicted throughput across seqlen and head count")
    p.add_argument("--results", metavar="DIR", help="bench results for calibration (default bench/results)")
    p.add_argument("--validate", metavar="BENCH_JSON",
                   help="instead: compare predictions with a bench run (Spearman, share within 15%%)")
    args = p.parse_args(argv)
    args.gpu_given, args.gpu = args.gpu, args.gpu or "h100"
    try:
        if args.validate:
            report = validate(args.validate, gpu=args.gpu_given, results_dir=args.results)
            print(json.dumps(report, indent=1, default=_json_default) if args.json else report["summary"])
            return 0
        if args.heads is None:
            p.error("--heads is required")
        lengths = read_lengths(args.varlen_lengths) if args.varlen_lengths else None
        if lengths is None and args.seqlen is None:
            p.error("--seqlen is required unless --varlen-lengths is given")
        advice = advise(gpu=args.gpu, batch=args.batch, seqlen=args.seqlen, heads=args.heads,
                        kv_heads=args.kv_heads, head_dim=args.head_dim, causal=args.causal,
                        varlen_lengths=lengths, tolerance=args.tolerance, results_dir=args.results)
    except (ValueError, OSError, _tiles.TileTableMissing, _tiles.TileTableError) as exc:
        print(f"flashcore.advise: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(advice.to_dict(), indent=1, default=_json_default) if args.json else format_table(advice))
    if args.png:
        plot(advice, args.png)
        if not args.json:
            print(f"wrote {args.png}")
    return 0


class _CallableModule(types.ModuleType):
    """`flashcore.advise(...)` calls advise(): importing this submodule rebinds the package attribute
    `flashcore.advise` to the module, so the module itself must be callable for both spellings to work."""

    def __call__(self, *args, **kwargs) -> Advice:
        return advise(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
