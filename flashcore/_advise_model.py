"""The shape advisor's model: hardware constants, per-kernel tile counting, scheduling, calibration, validation.

flashcore/advise.py is the front end (arguments, suggestions, table, PNG, CLI); this file holds what it
computes. Every number here is either read from a tile table, taken from ../shared/HARDWARE.md (or the vendor
datasheet named next to it), or an assumption named as one.
"""

from __future__ import annotations

import glob
import heapq
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ._tiles import TileTable

# ---- hardware (../shared/HARDWARE.md unless said otherwise) ------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    arch: str  # which kernels serve it: "sm90" or "gfx942"
    units: int  # SMs or CUs: the slots a tile runs on
    unit_name: str
    peak_tflops: float  # dense bf16
    hbm_tbps: float  # memory bandwidth the roofline divides by
    cache_mb: float  # last-level cache that K/V reuse across tiles must fit in
    simds_per_unit: int  # gfx942: blocks per CU follow from waves per SIMD; 1 on NVIDIA (table gives CTAs/SM)
    source: str


H100_SMS = 132  # HARDWARE.md: measured on the project's H100 SXM
H100_PEAK_BF16 = 989.0  # HARDWARE.md: datasheet dense bf16 (cuBLAS reaches 798 on random data)
H100_COPY_TBPS = 3.0  # HARDWARE.md: device copy ~3.0 TB/s measured (bytes read + written)
H100_L2_MB = 50.0  # HARDWARE.md: measured
H100_DATASHEET_TBPS = 3.35  # NVIDIA H100 SXM datasheet HBM3 (not in HARDWARE.md): relates a datasheet figure to copy
H200_SMS = 132  # same GH100 die and SM count as the H100 SXM (NVIDIA H200 datasheet; not in HARDWARE.md)
H200_PEAK_BF16 = 989.0  # NVIDIA H200 datasheet, dense bf16 (1979 is with sparsity); same tensor cores as H100
H200_HBM_TBPS = 4.8 * H100_COPY_TBPS / H100_DATASHEET_TBPS  # datasheet 4.8 TB/s x the H100's measured/datasheet
MI300X_CUS = 304  # HARDWARE.md
MI300X_PEAK_BF16 = 1307.0  # HARDWARE.md: 2*32*32*8 FLOPs per MFMA * 1216 matrix cores * 2100 MHz / 32 cycles
MI300X_HBM_TBPS = 5.3  # AMD MI300X datasheet peak (not in HARDWARE.md; never measured here)
MI300X_LLC_MB = 256.0  # AMD CDNA3 white paper: Infinity Cache shared by the 8 XCDs (not in HARDWARE.md)
MI300X_SIMDS_PER_CU = 4  # CDNA3: a block of 4 waves puts one wave on each SIMD (csrc/tiles/gfx942_fwd.h)

GPUS = {
    "h100": Gpu("H100 SXM", "sm90", H100_SMS, "SM", H100_PEAK_BF16, H100_COPY_TBPS, H100_L2_MB, 1,
                "HARDWARE.md: 132 SMs, 989 TFLOP/s dense bf16, ~3.0 TB/s copy, 50 MB L2"),
    "h200": Gpu("H200 SXM", "sm90", H200_SMS, "SM", H200_PEAK_BF16, H200_HBM_TBPS, H100_L2_MB, 1,
                "NVIDIA H200 datasheet (not in HARDWARE.md): GH100, 132 SMs, 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e, "
                "50 MB L2"),
    "mi300x": Gpu("MI300X", "gfx942", MI300X_CUS, "CU", MI300X_PEAK_BF16, MI300X_HBM_TBPS, MI300X_LLC_MB,
                  MI300X_SIMDS_PER_CU, "HARDWARE.md: 304 CUs, 1307 TFLOP/s dense bf16; AMD datasheet: 5.3 TB/s HBM3, "
                  "256 MB Infinity Cache"),
}

# ---- kernels ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    file: str  # csrc/tiles/<file>
    label: str  # "sm90 forward": the missing-table message names it
    columns: tuple  # columns the model needs from the table
    grid: str  # "query": a tile is block_m query rows walking key tiles; "kv": a tile is block_n keys walking
    #            query tiles (the backward's K/V blocks)
    item_heads: str  # "q": one work item per query head; "kv": per K/V head, walking its whole GQA group
    scheduler: str  # see SCHEDULERS
    scheduler_note: str
    order: str  # see ORDERS: the sequence of work items the scheduler hands out


SCHEDULERS = {
    "dynamic": "each item, in the kernel's order, goes to whichever slot frees first (greedy list scheduling): the "
               "hardware dispatching a plain grid, or a persistent grid claiming items from an atomic counter",
    "static": "persistent grid of min(items, slots) CTAs, CTA c runs items c, c + grid, ... of the kernel's order",
}
ORDERS = {
    "sm90_fwd": "csrc/cuda/fwd/schedule.h tile_at: (sequence, head) pairs in L2-sized groups, inside a group the last "
                "query block first with the group's pairs fastest; a shorter sequence's missing blocks are empty items",
    "blocks": "(block, head, sequence), block fastest; blocks past a shorter sequence's end are empty items",
    "tiles_slowest_last_first": "grid order as csrc/hip/compat.h tile_slowest maps it: per sequence, every head's "
                                "last query tile, then every head's next-to-last, ...; blocks past a shorter "
                                "sequence exit at once (left out)",
    "tiles_slowest": "grid order as csrc/hip/compat.h tile_slowest maps it: per sequence, every K/V head's block 0, "
                     "then every head's block 1, ...; blocks past a sequence's end left out",
}
NV_COLUMNS = ("head_dim", "block_m", "block_n", "stages", "warpgroups", "ctas_per_sm")
AMD_COLUMNS = ("head_dim", "block_m", "block_n", "waves", "waves_per_simd")
KERNELS = {
    ("sm90", "fwd"): KernelSpec("sm90_fwd.h", "sm90 forward", NV_COLUMNS, "query", "q", "dynamic",
                                "dynamic persistent (csrc/cuda/fwd/schedule.h): (sequence, head) pairs in groups whose "
                                "K/V fit half of L2, inside a group the last query block first (longest causal tiles "
                                "first) with the group's pairs fastest; CTA c starts with tile c, then claims the "
                                "next tile of that order from an atomic counter (FLASHCORE_SM90_STATIC_SCHEDULE=1: "
                                "static, CTA c takes tiles c, c + SMs, ...)", "sm90_fwd"),
    ("sm90", "bwd"): KernelSpec("sm90_bwd.h", "sm90 backward", NV_COLUMNS, "kv", "kv", "dynamic",
                                "dynamic persistent (csrc/cuda/bwd_sm90_plan.h): one item per (K/V block, K/V head, "
                                "sequence) walking its group's query heads, K/V block fastest (causal: longest "
                                "first); CTA c starts with item c, then claims the next item of that order from an "
                                "atomic counter (FLASHCORE_SM90_STATIC_SCHEDULE=1: static, CTA c takes items c, "
                                "c + SMs x ctas_per_sm, ...)", "blocks"),
    ("gfx942", "fwd"): KernelSpec("gfx942_fwd.h", "gfx942 forward", AMD_COLUMNS, "query", "q", "dynamic",
                                  "grid (query tile, head, sequence) as csrc/hip/fwd_gfx942.hip launches it, "
                                  "dispatched in block order, tile slowest (every head's last, i.e. causal longest, "
                                  "query tile first); XCD round-robin not modelled", "tiles_slowest_last_first"),
    ("gfx942", "bwd"): KernelSpec("gfx942_bwd.h", "gfx942 backward", AMD_COLUMNS, "kv", "kv", "dynamic",
                                  "grid (K/V block, K/V head, sequence) as csrc/hip/bwd_gfx942.hip launches it, each "
                                  "block walking its group's query heads, dispatched in block order, K/V block "
                                  "slowest (every head's block 0, causal's longest, first)", "tiles_slowest"),
}
L2_GROUP_SHARE = 0.5  # sm90 fwd host code: a group of (sequence, head) pairs keeps its K/V within half of L2
STEP_FLOPS_PER_MAC = {"fwd": 4, "bwd": 10}  # fwd: Q.K^T and P.V (2 GEMMs x 2 FLOPs); bwd: 5 GEMMs (S, dP, dV,
#                                            dK, dQ) x 2: the convention's 2.5x
OVERHEAD_STEPS = 1.0  # assumption: a tile's prologue (Q or K/V load, pipeline fill) and epilogue (store) cost about
#                       one inner step; calibration absorbs the error at long sequences, not at short ones
LAUNCH_US = 5.0  # assumption: kernel launch + drain, a few microseconds on both vendors
OVERHEAD_NOTE = (f"assumed: each tile pays {OVERHEAD_STEPS:g} extra inner step (prologue/epilogue); "
                 f"{LAUNCH_US:g} us per launch")
MEMORY_NOTE = ("memory roofline: Q/O (and dO/dQ) once, K/V once per (sequence, K/V head) while the co-resident "
               "heads' K/V fit the last-level cache, re-read in proportion to the excess otherwise")
FLOP_NOTE = "fwd 4*B*H*S^2*D (x0.5 causal), bwd 2.5x (HARDWARE.md convention); TFLOP/s uses these, not tile FLOPs"
CACHE_SHARE = 0.5  # assumption: half the cache holds reusable K/V, the rest streams Q, O and the other operands
BYTES = 2  # bf16/fp16 operands
LSE_BYTES = 4  # fp32 log-sum-exp per row (and the backward's delta)
DQ_ACCUM_BYTES = 4  # backward: dQ accumulates in fp32; the postprocess reads it back and writes dQ in bf16
AUX_NOTE = ("backward adds its preprocess (delta = rowsum(dO*O): reads O, dO) and dQ postprocess (fp32 -> bf16) "
            "as memory-bound kernels with a launch each")

# ---- assumed kernel efficiency (steady state: a full wave of long tiles), until calibrated ------------------
FA3_FWD_TFLOPS = {64: 497.0, 128: 648.0, 256: 740.0}  # HARDWARE.md: FA3 paper, H100 SXM5, 16k non-causal fwd
FA3_BWD_OVER_FWD = 561.0 / 648.0  # HARDWARE.md: FA3 bwd D=128 561 vs fwd 648 at 16k
# README "MI300X": the left-hand (no-overlap) MFMA-share bound per head dim of the gfx942 forward
GFX942_FWD_MFMA_SHARE = {64: 0.46, 96: 0.56, 128: 0.63, 192: 0.66, 256: 0.58}
ASSUMED_EFFICIENCY = {
    ("sm90", "fwd"): {d: t / H100_PEAK_BF16 for d, t in FA3_FWD_TFLOPS.items()},  # = FA3's published steady state
    ("sm90", "bwd"): {d: FA3_BWD_OVER_FWD * t / H100_PEAK_BF16 for d, t in FA3_FWD_TFLOPS.items()},
    ("gfx942", "fwd"): dict(GFX942_FWD_MFMA_SHARE),  # no overlap credited: nothing has run on an MI300X
    ("gfx942", "bwd"): {d: FA3_BWD_OVER_FWD * e for d, e in GFX942_FWD_MFMA_SHARE.items()},  # FA3's bwd/fwd ratio
}
ANCHOR_SEQLEN, ANCHOR_HIDDEN = 16384, 2048  # where FA3's figures are quoted: batch 1, heads*head_dim 2048, 16k
ASSUMED_SOURCE = {
    ("sm90", "fwd"): "assumed: reproduces FA3's published H100 fwd at 16k non-causal with our tiles",
    ("sm90", "bwd"): "assumed: reproduces FA3's fwd x 561/648 (its bwd/fwd) at 16k with our tiles",
    ("gfx942", "fwd"): "assumed = README's no-overlap MFMA share",
    ("gfx942", "bwd"): "assumed = fwd MFMA share x FA3's bwd/fwd",
}


_anchored: dict = {}


def anchored_efficiency(gpu: Gpu, spec: KernelSpec, table: TileTable, head_dim: int, mode: str) -> float:
    """sm90, uncalibrated: the efficiency at which this model, with our tiles, predicts FA3's published H100
    throughput at the anchor shape (1 x 16k, heads*head_dim = 2048, non-causal). So the tile, wave and overhead
    structure is not counted twice (FA3's figure already includes its own), and at the anchor we say what FA3
    measured: a kernel as good as FA3, no better."""
    key = (gpu.name, spec.file, table.path, tuple(sorted(table.row(head_dim).items())), mode)
    if key not in _anchored:
        anchor = interpolate(FA3_FWD_TFLOPS, head_dim) * (FA3_BWD_OVER_FWD if mode == "bwd" else 1.0)
        heads = max(1, ANCHOR_HIDDEN // head_dim)
        shape = Shape(batch=1, seqlen=ANCHOR_SEQLEN, heads=heads, kv_heads=heads, head_dim=head_dim)
        unit = predict_kernel(gpu, spec, table, shape, _Fixed(1.0))
        compute_us = unit.flops / (anchor * 1e6) - LAUNCH_US - unit.aux_us  # what FA3's time leaves for compute
        _anchored[key] = min(1.0, unit.compute_us / compute_us)
    return _anchored[key]


def interpolate(points: dict, x: float) -> float:
    """Linear in x between the nearest keys, flat beyond the ends."""
    keys = sorted(points)
    if x <= keys[0]:
        return points[keys[0]]
    for lo, hi in zip(keys, keys[1:]):
        if x <= hi:
            return points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)
    return points[keys[-1]]


# ---- the shape --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    batch: int
    seqlen: int  # the longest sequence with varlen
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = False
    lengths: Optional[tuple] = None  # varlen: one length per sequence

    def sequences(self) -> list:
        """[(length, count)]: dense shapes are one length repeated batch times."""
        if self.lengths is None:
            return [(self.seqlen, self.batch)]
        counts: dict = {}
        for n in self.lengths:
            counts[n] = counts.get(n, 0) + 1
        return sorted(counts.items())

    def fwd_flops(self) -> float:
        total = sum(4 * count * self.heads * n * n * self.head_dim for n, count in self.sequences())
        return total * (0.5 if self.causal else 1.0)


# ---- counting tiles --------------------------------------------------------------------------------------
def tile_steps(grid: str, n: int, block_m: int, block_n: int, causal: bool) -> list:
    """Inner steps of each tile of one (sequence of length n, head), in tile order, with its in-range area.

    grid "query": tile i = query rows [i*bm, (i+1)*bm), one step per key tile it visits (causal: keys <= its last
    row). grid "kv": tile j = keys [j*bn, (j+1)*bn), one step per query tile it visits (causal: rows >= its first
    key). Returns [(steps, in_range_area)], where in_range_area counts score positions inside [0, n)^2 the tile's
    steps cover (the rest of steps*bm*bn is padding).
    """
    out = []
    if grid == "query":
        for i in range(math.ceil(n / block_m)):
            rows = min(block_m, n - i * block_m)
            last_row = i * block_m + rows - 1
            steps = last_row // block_n + 1 if causal else math.ceil(n / block_n)
            out.append((steps, rows * min(steps * block_n, n)))
    else:
        q_tiles = math.ceil(n / block_m)
        for j in range(math.ceil(n / block_n)):
            cols = min(block_n, n - j * block_n)
            first = (j * block_n) // block_m if causal else 0
            out.append((q_tiles - first, cols * (n - first * block_m)))
    return out


def schedule(durations: Sequence[float], slots: int, kind: str) -> float:
    """Makespan of the items (in the kernel's order) on `slots` slots.

    "dynamic": each item goes to the slot that frees first (a plain grid under the hardware dispatcher).
    "static": slot c runs items c, c + G, c + 2G, ... with G = min(items, slots) (a persistent grid).
    "longest_first": dynamic after sorting longest first (LPT), the best a list scheduler does; for comparisons.
    """
    if not durations:
        return 0.0
    if kind == "static":
        grid = min(slots, len(durations))
        return max(sum(durations[c::grid]) for c in range(grid))
    jobs = sorted(durations, reverse=True) if kind == "longest_first" else list(durations)
    if kind not in ("dynamic", "longest_first"):
        raise ValueError(f"kind: expected 'dynamic', 'static' or 'longest_first', got {kind!r}")
    if len(set(jobs)) == 1:  # equal items: whole waves, exactly
        return math.ceil(len(jobs) / slots) * jobs[0]
    free = [0.0] * min(slots, len(jobs))
    heapq.heapify(free)
    for d in jobs:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def sm90_fwd_order(pairs: list, heads_per_group: int) -> list:
    """The sm90 forward's tile order (csrc/cuda/fwd/schedule.h tile_at): `pairs` holds each (sequence, head)'s tile
    durations by query block; groups of heads_per_group consecutive pairs; in a group the reverse block index
    (0 = a sequence's last block) is slowest and the pairs fastest. A shorter sequence's missing blocks are empty
    tiles (0): they keep their place in the order (a CTA claims one and moves on at once)."""
    m_blocks = max(len(p) for p in pairs)
    order = []
    for first in range(0, len(pairs), heads_per_group):
        group = pairs[first:first + heads_per_group]
        for m_rev in range(m_blocks):
            order += [p[len(p) - 1 - m_rev] if m_rev < len(p) else 0.0 for p in group]
    return order


def heads_per_group(l2_bytes: float, kv_bytes_per_pair: float, pairs: int) -> int:
    """Pairs per group of the sm90 forward (csrc/cuda/fwd/schedule.h): as many as keep the group's K/V in the budget."""
    return int(min(pairs, max(1, (l2_bytes * L2_GROUP_SHARE) // kv_bytes_per_pair)))


@dataclass
class KernelPrediction:
    mode: str
    kernel: str
    block_m: int
    block_n: int
    table_head_dims: list
    align: int  # seqlen multiple that leaves no padding: lcm(block_m, block_n)
    units: int  # tiles with work
    slots_per_unit: int  # concurrent tiles per SM/CU
    slots: int
    waves: float  # units / slots
    full_waves: int
    last_wave_fill: float
    padding_waste: float  # share of computed tile area past the sequence end
    mask_waste: float  # share of computed tile area masked by causality (diagonal tiles)
    work_imbalance: float  # largest tile's steps / mean tile's steps
    schedule_efficiency: float  # busy slot time / (slots x makespan), from the simulated schedule
    wave_efficiency: float  # units / (full_waves x slots): what equal tiles would reach
    longest_first_efficiency: float  # what a dynamic longest-first (LPT) scheduler would reach on the same tiles:
    #                                  the gap to schedule_efficiency is the kernel's scheduler's own loss
    gqa_group: int  # query heads per K/V head: K/V reads each shared by this many heads
    streamed: str  # the operand tiles re-read: "K/V" (fwd) or "Q/dO" (bwd)
    stream_bytes_once: float
    stream_bytes_no_reuse: float
    l2_working_set_mb: float
    l2_fits: bool
    dram_bytes: float
    efficiency: float
    efficiency_source: str
    compute_us: float
    memory_us: float
    aux_us: float  # backward: its preprocess and dQ postprocess kernels (AUX_NOTE)
    bound: str
    time_us: float
    flops: float  # the convention's, not the tiles'
    tflops: float
    frac_of_gpu_peak: float
    frac_of_kernel_peak: float  # tflops / (peak x efficiency): what tiling, scheduling and memory leave
    notes: list = field(default_factory=list)


def kernel_order(spec: KernelSpec, gpu: Gpu, shape: Shape, pairs: list) -> list:
    """The items' durations in the order the kernel hands them out (ORDERS); `pairs` holds each (sequence, item
    head)'s item durations in launch order."""
    if spec.order == "sm90_fwd":
        kv_bytes_per_pair = 2 * shape.seqlen * shape.head_dim * BYTES / (shape.heads // shape.kv_heads)
        return sm90_fwd_order(pairs, heads_per_group(gpu.cache_mb * 1e6, kv_bytes_per_pair, len(pairs)))
    if spec.order == "blocks":
        blocks = max(len(p) for p in pairs)
        return [t for p in pairs for t in p + [0.0] * (blocks - len(p))]
    if spec.order in ("tiles_slowest_last_first", "tiles_slowest"):
        heads = shape.heads if spec.item_heads == "q" else shape.kv_heads  # pairs per sequence
        last_first = spec.order == "tiles_slowest_last_first"  # the forward runs a sequence's last tile first
        order = []
        for first in range(0, len(pairs), heads):
            sequence = [list(reversed(p)) if last_first else p for p in pairs[first:first + heads]]
            for tile in range(max(len(p) for p in sequence)):
                order += [p[tile] for p in sequence if tile < len(p)]
        return order
    raise ValueError(f"KernelSpec.order: expected one of {sorted(ORDERS)}, got {spec.order!r}")


def slots_per_unit(gpu: Gpu, row: dict) -> int:
    if "ctas_per_sm" in row:
        return row["ctas_per_sm"]
    return max(1, row["waves_per_simd"] * gpu.simds_per_unit // row["waves"])


def predict_kernel(gpu: Gpu, spec: KernelSpec, table: TileTable, shape: Shape, calib) -> KernelPrediction:
    mode = "fwd" if spec.grid == "query" else "bwd"
    row = table.row(shape.head_dim)
    bm, bn, d = row["block_m"], row["block_n"], shape.head_dim
    per_unit = slots_per_unit(gpu, row)
    slots = gpu.units * per_unit
    eff, eff_source = calib.efficiency(gpu.arch, mode, d)
    if gpu.arch == "sm90" and eff_source == ASSUMED_SOURCE[(gpu.arch, mode)]:
        eff = anchored_efficiency(gpu, spec, table, d, mode)
    step_us = STEP_FLOPS_PER_MAC[mode] * bm * bn * d / (gpu.peak_tflops * 1e6 / slots * eff)
    group = shape.heads // shape.kv_heads
    # A work item covers one query head, or (item_heads "kv") one K/V head and the `group` query heads it serves.
    item_heads, heads_in_item = (shape.heads, 1) if spec.item_heads == "q" else (shape.kv_heads, group)

    pairs, steps_all = [], []  # pairs: per (sequence, item head) in launch order, its items' durations
    computed = in_range = needed = 0.0
    for n in (shape.lengths or [shape.seqlen] * shape.batch):
        tiles = [(st * heads_in_item, area * heads_in_item) for st, area in tile_steps(spec.grid, n, bm, bn, shape.causal)]
        durations = [(st + OVERHEAD_STEPS) * step_us for st, _ in tiles]
        pairs += [durations] * item_heads
        steps_all += [st for st, _ in tiles] * item_heads
        computed += item_heads * sum(st for st, _ in tiles) * bm * bn
        in_range += item_heads * sum(a for _, a in tiles)
        needed += shape.heads * (n * (n + 1) / 2 if shape.causal else n * n)
    order = kernel_order(spec, gpu, shape, pairs)
    units = len(steps_all)
    makespan = schedule(order, slots, spec.scheduler)
    full_waves = math.ceil(units / slots)
    waves = units / slots
    fill = waves - (full_waves - 1)

    mem = memory_model(gpu, mode, shape, bm, bn, slots, steps_all, len(pairs))
    compute_us = makespan
    memory_us = mem["dram_bytes"] / (gpu.hbm_tbps * 1e6)
    aux_us = 0.0
    if mode == "bwd":
        tokens_heads = sum(n * c for n, c in shape.sequences()) * shape.heads
        aux_bytes = (2 * tokens_heads * d * BYTES + tokens_heads * LSE_BYTES  # preprocess: O, dO in, delta out
                     + tokens_heads * d * (DQ_ACCUM_BYTES + BYTES))  # postprocess: fp32 dQ in, dQ out
        aux_us = aux_bytes / (gpu.hbm_tbps * 1e6) + 2 * LAUNCH_US
    time_us = max(compute_us, memory_us) + LAUNCH_US + aux_us
    flops = shape.fwd_flops() * (2.5 if mode == "bwd" else 1.0)
    tflops = flops / (time_us * 1e-6) / 1e12
    busy = sum(order)
    lpt = busy / (slots * schedule([t for t in order if t], slots, "longest_first"))
    return KernelPrediction(
        mode=mode, kernel=table.name, block_m=bm, block_n=bn, table_head_dims=list(table.head_dims),
        align=math.lcm(bm, bn), units=units, slots_per_unit=per_unit, slots=slots, waves=waves,
        full_waves=full_waves, last_wave_fill=fill, padding_waste=1 - in_range / computed,
        mask_waste=(in_range - needed) / computed, work_imbalance=max(steps_all) / statistics.fmean(steps_all),
        schedule_efficiency=busy / (slots * makespan), wave_efficiency=units / (full_waves * slots),
        longest_first_efficiency=lpt,
        gqa_group=group, efficiency=eff, efficiency_source=eff_source, compute_us=compute_us, memory_us=memory_us,
        aux_us=aux_us, bound="memory" if memory_us > compute_us else "compute", time_us=time_us, flops=flops,
        tflops=tflops, frac_of_gpu_peak=tflops / gpu.peak_tflops, frac_of_kernel_peak=tflops / (gpu.peak_tflops * eff),
        **mem)


def memory_model(gpu: Gpu, mode: str, shape: Shape, bm: int, bn: int, slots: int, steps: list, groups: int) -> dict:
    """DRAM bytes: every operand once, plus re-reads of the streamed operand the cache cannot hold (MEMORY_NOTE).

    Forward: each query tile streams the K/V tiles of its (sequence, K/V head), shared by the GQA group's heads
    and all their query tiles. Backward: each K/V block streams the Q/dO tiles of its query heads. `groups` is
    the number of (sequence, head) pairs the items are laid out by; `steps` the items' inner steps.
    """
    d, h, kv = shape.head_dim, shape.heads, shape.kv_heads
    tokens = sum(n * c for n, c in shape.sequences())
    kv_once = 2 * tokens * kv * d * BYTES  # K and V (or dK and dV), each once
    if mode == "fwd":
        once = 2 * tokens * h * d * BYTES + tokens * h * LSE_BYTES  # Q in, O and LSE out
        distinct, without_reuse = kv_once, sum(steps) * 2 * bn * d * BYTES
        sharing = groups // (h // kv) or 1  # (sequence, K/V head): the pairs of a GQA group share K/V
    else:
        once = (2 * kv_once + 2 * tokens * h * LSE_BYTES  # K, V in; dK, dV out; LSE, delta in
                + tokens * h * d * DQ_ACCUM_BYTES)  # the fp32 dQ accumulator, written once
        distinct, without_reuse = 2 * tokens * h * d * BYTES, sum(steps) * 2 * bm * d * BYTES  # Q and dO
        sharing = groups  # (sequence, head) whose items share Q/dO
    tiles_per_group = max(1, len(steps) // sharing)
    in_flight = min(sharing, math.ceil(slots / tiles_per_group) + 1)  # +1: the next group starts early
    working_set = in_flight * distinct / sharing
    cache = gpu.cache_mb * 1e6 * CACHE_SHARE
    hit = min(1.0, cache / working_set) if working_set else 1.0
    streamed = distinct + max(0.0, without_reuse - distinct) * (1 - hit)
    return {"streamed": "K/V" if mode == "fwd" else "Q/dO", "stream_bytes_once": distinct,
            "stream_bytes_no_reuse": without_reuse, "l2_working_set_mb": working_set / 1e6, "l2_fits": hit >= 1.0,
            "dram_bytes": once + streamed}


# ---- calibration -----------------------------------------------------------------------------------------
DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"  # the checkout's results
DEVICE_NAMES = {"h100": ("h100",), "h200": ("h200",), "mi300x": ("mi300x",)}  # substrings of device.name, lower
KERNEL_BACKENDS = ("cuda_sm90", "hip_gfx942")  # flashcore rows that ran our kernels (not the reference)
DIRECT_KERNEL_IMPL = "flashcore_"  # bench peers calling a kernel library directly (e.g. flashcore_sm90): no backend
BENCH_SCHEMA = "flashcore.bench/1"


@dataclass
class Calibration:
    gpu: str
    status: str  # one line a person reads: calibrated from what, or "uncalibrated: ..."
    calibrated: bool
    files: list
    cases: int
    measured: dict = field(default_factory=dict)  # "arch/mode/head_dim" -> fitted efficiency

    def efficiency(self, arch: str, mode: str, head_dim: int) -> tuple[float, str]:
        key = f"{arch}/{mode}/{head_dim}"
        if key in self.measured:
            return self.measured[key], f"measured, {self.cases} cases"
        same_mode = {int(k.rsplit("/", 1)[1]): v for k, v in self.measured.items() if k.startswith(f"{arch}/{mode}/")}
        if same_mode:
            return interpolate(same_mode, head_dim), "interpolated from measured head dims"
        return interpolate(ASSUMED_EFFICIENCY[(arch, mode)], head_dim), ASSUMED_SOURCE[(arch, mode)]


def measured_cases(doc: dict, gpu: Optional[str] = None) -> list:
    """The rows of one bench JSON where our kernels ran (impl "flashcore" on a kernel backend, or a direct kernel
    peer "flashcore_*"), passed their check, and are fwd or bwd; one per (mode, shape), "flashcore" first."""
    if doc.get("schema") != BENCH_SCHEMA:
        return []
    name = str((doc.get("device") or {}).get("name", "")).lower()
    if gpu is not None and not any(p in name for p in DEVICE_NAMES[gpu]):
        return []
    ours = [c for c in doc.get("cases", [])
            if (c.get("impl") == "flashcore" and c.get("backend") in KERNEL_BACKENDS
                or str(c.get("impl", "")).startswith(DIRECT_KERNEL_IMPL))
            and c.get("status") == "ok" and c.get("mode") in ("fwd", "bwd")
            and (c.get("check") or {}).get("passed") and c.get("median_ms", 0) > 0]
    kept: dict = {}
    for c in sorted(ours, key=lambda c: c["impl"] != "flashcore"):
        key = (c["mode"], c["batch"], c["seqlen"], c["heads"], c.get("kv_heads", c["heads"]), c["head_dim"],
               bool(c["causal"]))
        kept.setdefault(key, c)
    return list(kept.values())


def case_shape(case: dict) -> Shape:
    return Shape(batch=case["batch"], seqlen=case["seqlen"], heads=case["heads"],
                 kv_heads=case.get("kv_heads", case["heads"]), head_dim=case["head_dim"], causal=bool(case["causal"]))


def _uncalibrated(gpu: str, why: str) -> Calibration:
    return Calibration(gpu, f"uncalibrated: {why}; using the static model (peak dense bf16 x an assumed kernel "
                            f"efficiency)", False, [], 0)


def calibrate(gpu: str, results_dir=None, exclude: Sequence = (), tiles_dir=None) -> Calibration:
    """Fit each (mode, head_dim)'s efficiency to bench/results/ measurements of our kernels on this GPU.

    For each measured case, the efficiency that makes the model's compute time equal the measured time (launch
    overhead removed) is computed; the median per (mode, head_dim) is kept. Files in `exclude` are skipped (so
    `validate` never tests on what it was fitted to).
    """
    from . import _tiles
    directory = Path(results_dir) if results_dir else DEFAULT_RESULTS
    excluded = {Path(p).resolve() for p in exclude}
    fits: dict = {}
    used = []
    for path in sorted(glob.glob(str(directory / "*.json"))):
        if Path(path).resolve() in excluded:
            continue
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        cases = measured_cases(doc, gpu)
        if not cases:
            continue
        used.append(path)
        for case in cases:
            arch = GPUS[gpu].arch
            spec = KERNELS[(arch, case["mode"])]
            try:
                table = _tiles.load(spec.file, spec.label, spec.columns, tiles_dir)
                unit = predict_kernel(GPUS[gpu], spec, table, case_shape(case), _Fixed(1.0))
            except (LookupError, ValueError):
                continue
            measured_us = case["median_ms"] * 1e3 - LAUNCH_US
            if measured_us > 0:
                fits.setdefault(f"{arch}/{case['mode']}/{case['head_dim']}", []).append(unit.compute_us / measured_us)
    if not fits:
        where = f"{directory}" + (f" (excluding {len(excluded)} file(s))" if excluded else "")
        return _uncalibrated(gpu, f"no measurements in {where} for {gpu}")
    n = sum(len(v) for v in fits.values())
    measured = {k: min(1.0, statistics.median(v)) for k, v in fits.items()}
    return Calibration(gpu, f"calibrated from {n} measured cases in {len(used)} file(s) of {directory}", True, used, n,
                       measured)


class _Fixed:
    """A calibration stand-in that answers one efficiency (the fit computes at 1.0 and divides)."""

    def __init__(self, eff: float):
        self.eff = eff

    def efficiency(self, arch, mode, head_dim):
        return self.eff, "fixed"


# ---- validation --------------------------------------------------------------------------------------------
SPEARMAN_TARGET = 0.8  # issue 9: predicted ranking of the odd shapes matches the measured one
WITHIN = 0.15  # issue 9: predicted time within 15% ...
MOST = 0.5  # ... for most shapes: more than half


def ranks(values: Sequence[float]) -> list:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman: expected two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        raise ValueError("spearman: a sequence is constant, its ranks carry no order")
    return sxy / math.sqrt(sxx * syy)


def compare(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict:
    """Spearman of predicted vs measured times and the share of predictions within WITHIN of the measurement."""
    rho = spearman(predicted_ms, measured_ms)
    within = sum(abs(p / m - 1) <= WITHIN for p, m in zip(predicted_ms, measured_ms)) / len(measured_ms)
    return {"n": len(measured_ms), "spearman": rho, "within_15pct": within,
            "passes": rho >= SPEARMAN_TARGET and within > MOST}


def validate(bench_json, gpu: Optional[str] = None, results_dir=None, tiles_dir=None) -> dict:
    """Predicted vs measured time for every flashcore kernel row of a bench run (e.g. `bench --odd-shapes`).

    The statistics are per mode (fwd and bwd ranked separately: mixing them would reward the model merely for
    knowing that a backward is slower), and it passes when every mode does. The model is calibrated from
    bench/results/ without this file (no fitting to the data it is judged on).
    """
    from . import _tiles
    doc = json.loads(Path(bench_json).read_text()) if not isinstance(bench_json, dict) else bench_json
    name = str((doc.get("device") or {}).get("name", "")).lower()
    if gpu is None:
        gpu = next((g for g, pats in DEVICE_NAMES.items() if any(p in name for p in pats)), None)
        if gpu is None:
            raise ValueError(f"gpu: the bench file's device {name!r} is none of {', '.join(GPUS)}; pass gpu= (--gpu)")
    cases = measured_cases(doc, gpu)
    if len(cases) < 2:
        raise ValueError(f"bench_json: needs >= 2 passing flashcore kernel rows on {gpu}, found {len(cases)}")
    calib = calibrate(gpu, results_dir, exclude=[bench_json] if not isinstance(bench_json, dict) else [],
                      tiles_dir=tiles_dir)
    rows = []
    for case in cases:
        spec = KERNELS[(GPUS[gpu].arch, case["mode"])]
        table = _tiles.load(spec.file, spec.label, spec.columns, tiles_dir)
        pred = predict_kernel(GPUS[gpu], spec, table, case_shape(case), calib)
        rows.append({"mode": case["mode"], "batch": case["batch"], "seqlen": case["seqlen"], "heads": case["heads"],
                     "head_dim": case["head_dim"], "causal": case["causal"], "measured_ms": case["median_ms"],
                     "predicted_ms": pred.time_us / 1e3})
    modes = {}
    for mode in ("fwd", "bwd"):
        mine = [r for r in rows if r["mode"] == mode]
        if len(mine) >= 2:
            modes[mode] = compare([r["predicted_ms"] for r in mine], [r["measured_ms"] for r in mine])
    if not modes:
        raise ValueError("bench_json: needs >= 2 rows of one mode (fwd or bwd) to rank")
    passes = all(m["passes"] for m in modes.values())
    summary = "; ".join(f"{mode} {m['n']} shapes: Spearman {m['spearman']:.3f}, {m['within_15pct']:.0%} within "
                        f"{WITHIN:.0%}" for mode, m in modes.items())
    return {"gpu": gpu, "modes": modes, "passes": passes, "calibration": calib.status, "rows": rows,
            "summary": f"{gpu}: {summary} (targets: Spearman >= {SPEARMAN_TARGET}, more than {MOST:.0%} within "
                       f"{WITHIN:.0%}): {'PASS' if passes else 'FAIL'}; {calib.status}"}
