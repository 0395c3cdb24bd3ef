"""The sm_90a kernels (csrc/cuda/), executed thread by thread on the CPU model of an sm_90a grid (csrc/cuda_emu).

The harness compiles the kernel sources unchanged for the host (g++ -DFLASHCORE_SM90_EMU -include
csrc/cuda_emu/prelude.h): every CUDA thread is a fiber, wgmma / TMA / mbarriers / named barriers are modelled from
the PTX ISA (csrc/cuda_emu/emu.h). The launches are planned by the extension's own host code (plan_gemm, plan_fwd,
plan_bwd: tensor maps, arguments, persistent grids) for a pretend SM count of a few CTAs, so the persistent
schedulers cycle and the dynamic schedule's hand-off runs. The library is built once per session into the pytest
temp dir (FLASHCORE_EMU_CACHE=<dir> keeps it across sessions, keyed by a hash of the sources). What is checked:
- the GEMM against float64 matmul on shapes that are not tile multiples;
- the forward against flashcore.reference in float64 over head dims x dtypes, ragged seqlens, causal, windows,
  softcap, GQA/MQA, varlen, strided views; out / lse start as NaN, so an unwritten row fails; the static and dynamic
  tile schedules, seeds, interleavings and SM counts give bit-identical results;
- the backward (preprocess, main kernel, dq postprocess) against flashcore.reference's backward in float64, with
  keys no query sees getting dK = dV = 0; deterministic mode bit-identical across seeds, SM counts and schedules;
- the pipelines under adversarial interleavings (random warp priorities, greedy lowest / highest warp first, a
  lazy copy engine): bench/notes/emu_findings.md lists the injected bugs each one catches, and the kernel bugs found.
FLASHCORE_EMU_FULL=1 adds a larger sweep, FLASHCORE_EMU_FUZZ=<n> n random problems; FLASHCORE_EMU_SCHEDULE /
_ASYNC_DELAY / _SEED rerun everything under another interleaving.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from emu_build import compile_objects, compiler, link_library
from emu_checks import (assert_fwd_matches, assert_grads_match, forward_for, random_qkv, reference_bwd,
                         reference_fwd)

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
HEAD_DIMS = [64, 96, 128, 192, 256]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FULL = os.environ.get("FLASHCORE_EMU_FULL") == "1"
OUT_IN_Q_HEAD_DIMS = [64, 128]  # head dims that stage the output in a buffer of their own by default
SS_DKV_HEAD_DIMS = [64, 96, 128]  # head dims whose backward takes dV / dK's A operand from registers by default
# -DFLASHCORE_BWD_SM90_DQ_LAG (bwd_sm90_config.cuh kDqLag: dQ one tile behind, RS head dims) and
# -DFLASHCORE_BWD_SM90_DQ_LAG_PINGPONG (kPingPong: the same with the consumers' S^T issues in turn): both dtypes at 128
DQ_LAG_BUILDS = [(64, 1), (96, 1), (128, 1), (128, 0)]
# -DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS: D=64 as 128-row blocks of 2 consumers (v3), for bisecting on a GPU. Not in
# the extension's binary, so not in resources.json: its cap at entry is ptxas' 168 of __launch_bounds__(384, 1).
TWO_CONSUMER_REGISTERS = 168
# -DFLASHCORE_FWD_SM90_D128_N176: D=128 with 176-key tiles (fwd/traits.cuh kD128SwitchBlockN), the output staged in Q's
# buffer; registers at entry as the default D=128 kernel (resources.json), so no override is needed.
N176_BLOCK_N = 176
# -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (fwd/traits.cuh kItemPipeline: an item's tail turn also issues the next item's
# first S, Q double-buffered): the head dims where it takes effect in bf16, and D=128 in fp16
ITEM_PIPELINE_BUILDS = [(64, 1), (96, 1), (128, 1), (128, 0)]
PRETEND_SMS = 3  # CTAs of the persistent grids: small, so that each CTA runs several tiles / items
RESOURCES = json.loads((CSRC / "cuda" / "resources.json").read_text())["kernels"]


# ------------------------------------------------------------------------------------------------ building

def _cuda_include() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda.h").exists():
            return Path(home) / "include"
    return None


ENGINE, MAIN, SWITCHES, TWO_CONSUMERS, N176 = "engine", "main", "switches", "two_consumers", "n176"  # object
DQ_LAG, DQ_LAG_PP, ITEM_PIPELINE = "dq_lag", "dq_lag_pp", "item_pipeline"  # groups; ENGINE's objects: every library
GROUPS = (MAIN, SWITCHES, TWO_CONSUMERS, N176, DQ_LAG, DQ_LAG_PP, ITEM_PIPELINE)  # one library each


def _sources() -> list[tuple[str, list[str], str]]:
    """(source under csrc, extra flags, group): the engine and its shared fiber code, one harness object per kernel
    instantiation (so that they compile in parallel), and the bisecting switches (the forward's and the backward's)
    in libraries of their own: each changes its kernel's traits and SharedStorage, and two definitions of one
    template in one library would be an ODR violation (the linker keeps one: a kernel mixing both layouts). The
    forward's switches overlap per head dim (OUT_IN_Q and D64_TWO_CONSUMERS both change FwdTraits<64>, OUT_IN_Q and
    D128_N176 both FwdTraits<128>), so the D=64 two-consumer build, the D=128 176-key build and the item-pipelined
    build get a library each;
    the backward's switches all change BwdConfig<64 / 96 / 128>: SS_DKV, DQ_LAG and DQ_LAG_PP one library each."""
    engine = sorted(str(p.relative_to(CSRC)) for p in (CSRC / "cuda_emu").glob("*.cpp")
                    if not p.name.startswith("harness_"))
    engine += sorted(str(p.relative_to(CSRC)) for p in (CSRC / "emu_common").glob("*.cpp"))
    out = [(s, [], ENGINE) for s in engine] + [("cuda_emu/harness_gemm.cpp", [], MAIN)]
    for op in ("fwd", "bwd"):
        for d in HEAD_DIMS:
            for bf16 in (1, 0):
                flags = [f"-DFLASHCORE_EMU_HEAD_DIM={d}", f"-DFLASHCORE_EMU_BF16={bf16}"]
                out.append((f"cuda_emu/harness_{op}.cpp", flags, MAIN))
    for d in OUT_IN_Q_HEAD_DIMS:  # output staged in Q's buffer at head dims that have a buffer of their own
        flags = [f"-DFLASHCORE_EMU_HEAD_DIM={d}", "-DFLASHCORE_EMU_BF16=1", "-DFLASHCORE_FWD_SM90_OUT_IN_Q"]
        out.append(("cuda_emu/harness_fwd.cpp", flags, SWITCHES))
    for d in SS_DKV_HEAD_DIMS:  # the backward's dV / dK GEMMs with A from shared memory, as for D = 192 / 256
        flags = [f"-DFLASHCORE_EMU_HEAD_DIM={d}", "-DFLASHCORE_EMU_BF16=1", "-DFLASHCORE_BWD_SM90_SS_DKV"]
        out.append(("cuda_emu/harness_bwd.cpp", flags, SWITCHES))
    flags = ["-DFLASHCORE_EMU_HEAD_DIM=64", "-DFLASHCORE_EMU_BF16=1", "-DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS"]
    out.append(("cuda_emu/harness_fwd.cpp", flags, TWO_CONSUMERS))
    for bf16 in (1, 0):
        flags = ["-DFLASHCORE_EMU_HEAD_DIM=128", f"-DFLASHCORE_EMU_BF16={bf16}", "-DFLASHCORE_FWD_SM90_D128_N176"]
        out.append(("cuda_emu/harness_fwd.cpp", flags, N176))
    for d, bf16 in ITEM_PIPELINE_BUILDS:
        flags = [f"-DFLASHCORE_EMU_HEAD_DIM={d}", f"-DFLASHCORE_EMU_BF16={bf16}", "-DFLASHCORE_FWD_SM90_ITEM_PIPELINE"]
        out.append(("cuda_emu/harness_fwd.cpp", flags, ITEM_PIPELINE))
    for group, switch in ((DQ_LAG, "-DFLASHCORE_BWD_SM90_DQ_LAG"), (DQ_LAG_PP, "-DFLASHCORE_BWD_SM90_DQ_LAG_PINGPONG")):
        for d, bf16 in DQ_LAG_BUILDS:
            flags = [f"-DFLASHCORE_EMU_HEAD_DIM={d}", f"-DFLASHCORE_EMU_BF16={bf16}", switch]
            out.append(("cuda_emu/harness_bwd.cpp", flags, group))
    return out


def _tree_hash(flags: list[str]) -> str:
    h = hashlib.sha256(" ".join(flags).encode())
    for sub in ("cuda", "cuda_emu", "emu_common", "tiles"):
        for p in sorted((CSRC / sub).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(CSRC)).encode() + p.read_bytes())
    for p in sorted(CSRC.glob("*.h")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def libraries(tmp_path_factory) -> dict[str, ctypes.CDLL]:
    """The harness libraries (GROUPS), built once per session from objects compiled in parallel."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU model")
    include = _cuda_include()
    if include is None:
        pytest.skip("no CUDA headers (cuda.h; set CUDA_HOME): the kernels name CUtensorMap and cuda_fp16 types")
    flags = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_SM90_EMU", "-include",
             str(CSRC / "cuda_emu" / "prelude.h"), f"-I{CSRC}", f"-I{include}", "-Wno-psabi"]
    cache = os.environ.get("FLASHCORE_EMU_CACHE")
    out = Path(cache) / _tree_hash(flags) if cache else tmp_path_factory.mktemp("cuda_emu")
    paths = {group: out / f"libflashcore_cuda_emu_{group}.so" for group in GROUPS}
    if not all(p.exists() for p in paths.values()):
        out.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        sources = _sources()
        jobs = [(CSRC / source, [*flags, *extra, "-x", "c++"]) for source, extra, _ in sources]
        objects = compile_objects(cxx, jobs, out, "the CPU model")
        for group, path in paths.items():
            members = [o for o, (_, _, g) in zip(objects, sources) if g in (ENGINE, group)]
            link_library(cxx, members, path, "the CPU model")
        print(f"sm_90a CPU model built in {time.monotonic() - start:.1f} s")
    return {group: ctypes.CDLL(str(path)) for group, path in paths.items()}  # RTLD_LOCAL: no symbols shared


@pytest.fixture(scope="session")
def emu(libraries):
    return libraries[MAIN]


@pytest.fixture(scope="session")
def emu_switches(libraries):
    return libraries[SWITCHES]


@pytest.fixture(scope="session")
def emu_two_consumers(libraries):
    return libraries[TWO_CONSUMERS]


@pytest.fixture(scope="session")
def emu_n176(libraries):
    return libraries[N176]


@pytest.fixture(scope="session")
def emu_item_pipeline(libraries):
    return libraries[ITEM_PIPELINE]


@pytest.fixture(scope="session", params=[DQ_LAG, DQ_LAG_PP])
def emu_dq_lag(request, libraries):
    """The lagged-dQ builds, without and with the S^T ping-pong: (library, variant)."""
    return libraries[request.param], "_" + request.param


# ------------------------------------------------------------------------------------------------ calling

class EmuRun(ctypes.Structure):
    """csrc/cuda_emu/harness_common.h EmuRun: how a call runs on the model."""
    _fields_ = [("num_sms", ctypes.c_int32), ("l2_bytes", ctypes.c_int32), ("schedule", ctypes.c_int32),
                ("max_async_delay", ctypes.c_int32), ("seed", ctypes.c_uint64), ("static_schedule", ctypes.c_int32),
                ("registers", ctypes.c_int32), ("timeout_seconds", ctypes.c_double)]


H100_L2_BYTES = 50 * 2**20
STAT_NAMES = ("ctas", "fiber_switches", "collectives", "barriers", "async_ops")


def _registers(match: str) -> int:
    """Registers per thread ptxas gave the kernel (csrc/cuda/resources.json), for the model's setmaxnreg check."""
    return next(row["registers"] for row in RESOURCES if row["match"] in match or match in row["match"])


# The engine's choice of the next fiber (csrc/cuda_emu/emu.h Schedule)
RANDOM, ROUND_ROBIN, RANDOM_PRIORITY, LOWEST_FIRST, HIGHEST_FIRST = 0, 1, 2, 3, 4
LAZY_ASYNC = 100_000  # max_async_delay: TMA copies land only when nothing else can run (exposes early reuse)
# FLASHCORE_EMU_SCHEDULE / FLASHCORE_EMU_ASYNC_DELAY / FLASHCORE_EMU_SEED: the defaults of every call (to rerun the
# file under other interleavings)
DEFAULT_SCHEDULE = int(os.environ.get("FLASHCORE_EMU_SCHEDULE", RANDOM))
DEFAULT_ASYNC_DELAY = int(os.environ.get("FLASHCORE_EMU_ASYNC_DELAY", 64))
DEFAULT_SEED = int(os.environ.get("FLASHCORE_EMU_SEED", 1))


# Interleavings that expose races a fair random one rarely hits (each was needed to catch a mutation of the kernels,
# emu_findings.md): seeded random warp priorities (RANDOM_PRIORITY: one warp runs far ahead of another, as far as the
# barriers allow), the greedy lowest / highest warp first schedules (the same, deterministically: a missing barrier
# between the consumer warpgroups shows on every run, where one priority seed catches it only now and then), and TMA
# copies and stores landing only when nothing else can run (LAZY_ASYNC: a buffer reused before its copy finished
# reads or stores the wrong bytes).
INTERLEAVINGS = {"random": dict(), "round_robin": dict(schedule=ROUND_ROBIN),
                 **{f"priority_{seed}": dict(schedule=RANDOM_PRIORITY, seed=seed) for seed in (1, 2, 3)},
                 "lowest_first": dict(schedule=LOWEST_FIRST), "highest_first": dict(schedule=HIGHEST_FIRST),
                 "lazy_async": dict(max_async_delay=LAZY_ASYNC, seed=3),
                 **{f"priority_lazy_{seed}": dict(schedule=RANDOM_PRIORITY, max_async_delay=LAZY_ASYNC, seed=seed)
                    for seed in (4, 5, 6)},
                 "lowest_lazy": dict(schedule=LOWEST_FIRST, max_async_delay=LAZY_ASYNC),
                 "highest_lazy": dict(schedule=HIGHEST_FIRST, max_async_delay=LAZY_ASYNC)}


def _run(registers: int, num_sms=PRETEND_SMS, seed=DEFAULT_SEED, schedule=DEFAULT_SCHEDULE, static=False,
         l2_bytes=H100_L2_BYTES, max_async_delay=DEFAULT_ASYNC_DELAY) -> EmuRun:
    return EmuRun(num_sms=num_sms, l2_bytes=l2_bytes, schedule=schedule, max_async_delay=max_async_delay, seed=seed,
                  static_schedule=int(static), registers=registers, timeout_seconds=300.0)


def _call(fn, *args) -> dict:
    stats = (ctypes.c_uint64 * len(STAT_NAMES))()
    error = ctypes.create_string_buffer(4096)
    rc = fn(*args, stats, error, ctypes.c_int(len(error)))
    assert rc == 0, error.value.decode()
    return dict(zip(STAT_NAMES, stats))


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _views(tensors):
    """Pointers, sizes and strides (4 per tensor, elements) and ranks, as csrc/emu_harness_views.h reads them."""
    n = len(tensors)
    ptrs = (ctypes.c_void_p * n)(*(t.data_ptr() for t in tensors))
    sizes = (ctypes.c_int64 * (4 * n))(*[x for t in tensors for x in list(t.shape) + [1] * (4 - t.dim())])
    strides = (ctypes.c_int64 * (4 * n))(*[x for t in tensors for x in list(t.stride()) + [1] * (4 - t.dim())])
    dims = (ctypes.c_int * n)(*(t.dim() for t in tensors))
    return ptrs, sizes, strides, dims


def _type_name(dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp16"


# ------------------------------------------------------------------------------------------------ GEMM

def emu_gemm(emu, a, b, **run):
    """C = a @ b.T on csrc/cuda/gemm_sm90_kernel.cuh; C's rows padded to a multiple of 8 (the TMA stride granule),
    as csrc/gemm.cpp does; C starts as NaN."""
    m, k = a.shape
    n = b.shape[0]
    ldc = (n + 7) // 8 * 8
    c = torch.full((m, ldc), float("nan"), dtype=torch.bfloat16)
    _call(emu.emu_sm90_gemm, _ptr(a), _ptr(b), _ptr(c), ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(k),
          ctypes.c_int64(a.stride(0)), ctypes.c_int64(b.stride(0)), ctypes.c_int64(ldc),
          ctypes.byref(_run(_registers("16gemm_bf16_kernel"), **run)))
    return c[:, :n]


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lazy_async"])
@pytest.mark.parametrize("shape", [(130, 300, 72), (1, 8, 8), (257, 520, 400), (64, 256, 64)])
def test_gemm_matches_float64(emu, shape, interleaving):
    """Ragged M / N / K (TMA zero-fill and clipped stores), several tiles per CTA on 2 pretend SMs."""
    m, n, k = shape
    a = torch.randn(m, k).to(torch.bfloat16)
    b = torch.randn(n, k).to(torch.bfloat16)
    c = emu_gemm(emu, a, b, num_sms=2, **INTERLEAVINGS[interleaving])
    want = a.double() @ b.double().T
    assert not c.isnan().any(), f"{c.isnan().sum().item()} elements of C unwritten"
    err = (c.double() - want).abs().max().item()
    assert err <= 1e-2 * want.abs().max().item(), f"max error {err:.3g}"


# ------------------------------------------------------------------------------------------------ forward

def emu_fwd(emu, q, k, v, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0, cu_seqlens_q=None,
            cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, out=None, variant="", registers=None, **run):
    """csrc/cuda/fwd on the model. Dense q (b, sq, hq, d) or varlen (total, hq, d) with cu_seqlens; returns
    (out, lse, stats). out (or the given out view) and lse start as NaN. variant "_out_in_q": the build with
    -DFLASHCORE_FWD_SM90_OUT_IN_Q; "_two_consumers": with -DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS; "_n176": with
    -DFLASHCORE_FWD_SM90_D128_N176; "_item_pipeline": with -DFLASHCORE_FWD_SM90_ITEM_PIPELINE. registers: the
    kernel's cap at entry (default: resources.json's)."""
    varlen = cu_seqlens_q is not None
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype)
    out.fill_(float("nan"))
    lse_shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    lse = torch.full(lse_shape, float("nan"), dtype=torch.float32)
    batch = len(cu_seqlens_q) - 1 if varlen else q.shape[0]
    bf16 = q.dtype == torch.bfloat16
    fn = getattr(emu, f"emu_sm90_fwd_d{d}_{_type_name(q.dtype)}{variant}")
    stats = _call(fn, *_views((q, k, v, out)), _ptr(lse), _ptr(cu_seqlens_q), _ptr(cu_seqlens_k), batch, max_seqlen_q,
                  max_seqlen_k, ctypes.c_float(scale), int(causal), window[0], 0 if causal else window[1],
                  ctypes.c_float(softcap),
                  ctypes.byref(_run(registers or _registers(f"fwd_kernelILi{d}ELb{int(bf16)}E"), **run)))
    return out, lse, stats


def check_fwd(emu, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, run=None, **options):
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype)
    out, lse, stats = emu_fwd(emu, q, k, v, **options, **(run or {}))
    ref_out, ref_lse = reference_fwd(q, k, v, **options)
    assert_fwd_matches(out, lse, ref_out, ref_lse, dtype)
    return out, lse, stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_forward_head_dims(emu, head_dim, dtype):
    """4 tiles on 3 CTAs: the dynamic schedule hands one CTA a second tile."""
    check_fwd(emu, 2, 33, 130, 2, 1, head_dim, DTYPES[dtype])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 1), (1, 130), (130, 1), (17, 17), (200, 77), (77, 200), (129, 257),
                                     (17, 0)])
def test_forward_ragged_seqlens(emu, seqlens, causal):
    check_fwd(emu, 1, *seqlens, 2, 1, 64, torch.bfloat16, causal=causal)


@pytest.mark.parametrize("head_dim", [128, 256])
def test_forward_causal_large_head_dims(emu, head_dim):
    check_fwd(emu, 1, 130, 161, 2, 1, head_dim, torch.float16, causal=True)


@pytest.mark.parametrize("window", [(16, 8), (0, 0), (40, -1), (-1, 5), (200, 0), (2**31 - 1, 3), (3, 2**31 - 1),
                                    (2**31 - 1, 2**31 - 1)])
@pytest.mark.parametrize("seqlens", [(200, 140), (140, 200)])
def test_forward_window(emu, window, seqlens):
    """Windows near 2^31 (an int32 overflow in the kernel's band arithmetic, emu_findings.md) next to small ones."""
    check_fwd(emu, 1, *seqlens, 1, 1, 128, torch.bfloat16, window=window)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_softcap(emu, dtype):
    check_fwd(emu, 1, 100, 140, 2, 1, 64, DTYPES[dtype], causal=True, softcap=2.0)
    check_fwd(emu, 1, 33, 70, 1, 1, 192, DTYPES[dtype], window=(20, 10), softcap=30.0)


@pytest.mark.parametrize("heads", [(4, 2), (3, 1), (6, 3)])
def test_forward_gqa_mqa(emu, heads):
    check_fwd(emu, 2, 40, 70, *heads, 96, torch.bfloat16, causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0, 1.5])
def test_forward_scale(emu, scale):
    """Negative scale (the kernel negates q), zero (uniform weights), large."""
    check_fwd(emu, 1, 50, 90, 2, 1, 64, torch.bfloat16, softmax_scale=scale, causal=True)


def _varlen(lens_q, lens_k, heads_q, heads_kv, head_dim, dtype):
    cu_q = torch.tensor([0] + lens_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lens_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q = torch.randn(int(cu_q[-1]), heads_q, head_dim).to(dtype)
    k = torch.randn(int(cu_k[-1]), heads_kv, head_dim).to(dtype)
    v = torch.randn(int(cu_k[-1]), heads_kv, head_dim).to(dtype)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_varlen(emu, head_dim, causal):
    """Sequences of lengths (q, k): (1, 130), (0, 5), (33, 0) -> out 0 / lse -inf, (130, 33), (140, 140): the
    packed tensor has no edge between sequences, so partial query blocks store from registers."""
    lens_q, lens_k = [1, 0, 33, 130, 140], [130, 5, 0, 33, 140]
    dtype = torch.bfloat16 if causal else torch.float16
    q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 2, 1, head_dim, dtype)
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    # max_seqlen_* are upper bounds: a looser one only adds empty tiles to the schedule
    out, lse, _ = emu_fwd(emu, q, k, v, max_seqlen_q=max(lens_q) + 200 * causal, max_seqlen_k=max(lens_k),
                          **options)
    ref_out, ref_lse = reference_fwd(q, k, v, **options)
    assert_fwd_matches(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_varlen_non_finite_neighbour(emu, head_dim, causal):
    """A packed batch whose middle sequence holds an inf in V and a NaN in K: the key tile that runs past the first
    sequence's end loads those rows (masked, P = 0, but 0 x inf = NaN in P V unless consumer 0 zeroes the V rows past
    the end first). Sequences 0 and 2 must match their own references exactly as if alone; sequence 1 is NaN.
    Lengths put the first sequence's end inside a key tile at every head dim's block_n (128, 80)."""
    dtype = torch.bfloat16
    lens = [70, 50, 90]
    q, k, v, cu_q, cu_k = _varlen(lens, lens, 2, 1, head_dim, dtype)
    v[75, 0, 5] = float("inf")  # sequence 1's keys are rows 70..119
    k[72, 0, 3] = float("nan")
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse, _ = emu_fwd(emu, q, k, v, max_seqlen_q=max(lens), max_seqlen_k=max(lens), **options)
    for b in (0, 2):
        lo, hi = int(cu_q[b]), int(cu_q[b + 1])
        one = torch.tensor([0, hi - lo], dtype=torch.int32)
        ref_out, ref_lse = reference_fwd(q[lo:hi], k[lo:hi], v[lo:hi], causal=causal, cu_seqlens_q=one,
                                         cu_seqlens_k=one)
        assert_fwd_matches(out[lo:hi], lse[:, lo:hi], ref_out, ref_lse, dtype)
    assert out[70:120].isnan().any()


def test_forward_strided_views(emu):
    """q, k, v as views into one packed (batch, seqlen, 3, heads, dim) tensor, out into a wider buffer."""
    qkv = torch.randn(2, 70, 3, 2, 128).to(torch.bfloat16)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = torch.empty(2, 70, 2, 192, dtype=torch.bfloat16)[..., :128]
    got, lse, _ = emu_fwd(emu, q, k, v, causal=True, out=out)
    ref_out, ref_lse = reference_fwd(q, k, v, causal=True)
    assert_fwd_matches(got, lse, ref_out, ref_lse, torch.bfloat16)


def test_forward_schedules_bit_identical(emu):
    """Each tile is computed by one CTA start to finish, so the result does not depend on which CTA: static and
    dynamic tile schedules, seeds, fiber interleavings and SM counts give the same bits."""
    q, k, v = random_qkv(2, 300, 200, 2, 1, 64, torch.bfloat16)
    out0, lse0, stats = emu_fwd(emu, q, k, v, causal=True)
    assert stats["ctas"] == PRETEND_SMS
    for run in (dict(static=True), dict(seed=7), dict(seed=12345, max_async_delay=512), dict(schedule=1),
                dict(schedule=LOWEST_FIRST), dict(schedule=HIGHEST_FIRST, max_async_delay=LAZY_ASYNC),
                dict(num_sms=1), dict(num_sms=5), dict(l2_bytes=64 * 1024)):
        out, lse, _ = emu_fwd(emu, q, k, v, causal=True, **run)
        assert torch.equal(out, out0) and torch.equal(lse, lse0), f"differs with {run}"
    ref_out, ref_lse = reference_fwd(q, k, v, causal=True)
    assert_fwd_matches(out0, lse0, ref_out, ref_lse, torch.bfloat16)


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lazy_async", "priority_lazy_4"])
@pytest.mark.parametrize("head_dim", OUT_IN_Q_HEAD_DIMS)
def test_forward_out_in_q_switch(emu_switches, head_dim, interleaving):
    """-DFLASHCORE_FWD_SM90_OUT_IN_Q (the GPU bisecting switch): the output staged in Q's buffer, Q freed by the
    stores, at head dims that use a separate buffer by default; varlen for the direct-store path."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    for batch, seqlen_q, seqlen_k in [(2, 512, 100), (1, 256, 700)]:
        q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 2, 1, head_dim, torch.bfloat16)
        out, lse, _ = emu_fwd(emu_switches, q, k, v, causal=True, variant="_out_in_q", **run)
        assert_fwd_matches(out, lse, *reference_fwd(q, k, v, causal=True), torch.bfloat16)
    q, k, v, cu_q, cu_k = _varlen([1, 33, 130, 140], [130, 0, 33, 140], 2, 1, head_dim, torch.bfloat16)
    options = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse, _ = emu_fwd(emu_switches, q, k, v, max_seqlen_q=140, max_seqlen_k=140, variant="_out_in_q", **options,
                          **run)
    assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options), torch.bfloat16)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(191, 191), (192, 192), (193, 385), (385, 193), (384, 130), (1000, 17)])
def test_forward_d64_block_edges(emu, seqlens, causal):
    """D=64's 192-row blocks (3 consumers of 64 rows): lengths just below, at and above multiples of 192, so the last
    block has 1, 2 or 3 consumers with rows, and the causal diagonal crosses each consumer's rows."""
    check_fwd(emu, 1, *seqlens, 2, 1, 64, torch.bfloat16, causal=causal, run=dict(num_sms=2))


@pytest.mark.parametrize("causal", [False, True])
def test_forward_d64_varlen_block_edges(emu, causal):
    """Varlen D=64: sequences ending inside the first, second and third consumer's rows of a 192-row block (the
    warpgroups past the end store from registers, the others through TMA) and one row past a whole block."""
    lens_q, lens_k = [65, 130, 191, 193, 1, 192], [200, 130, 191, 100, 17, 0]
    q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 2, 1, 64, torch.bfloat16)
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse, _ = emu_fwd(emu, q, k, v, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), num_sms=2, **options)
    assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options), torch.bfloat16)


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lowest_first", "highest_lazy", "priority_lazy_4"])
def test_forward_d64_two_consumer_switch(emu, emu_two_consumers, interleaving):
    """-DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS (the GPU bisecting switch back to v3's 128-row blocks at D=64) matches
    the reference, and the default 3-consumer kernel bit for bit: every row walks its keys in the same 128-key tiles,
    last first, and tiles a row sees nothing of (the larger block's span) add exact zeros."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    for batch, seqlen_q, seqlen_k, causal in [(2, 512, 100, True), (1, 256, 700, True), (1, 300, 385, False)]:
        q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 2, 1, 64, torch.bfloat16)
        out, lse, _ = emu_fwd(emu_two_consumers, q, k, v, causal=causal, variant="_two_consumers",
                              registers=TWO_CONSUMER_REGISTERS, **run)
        assert_fwd_matches(out, lse, *reference_fwd(q, k, v, causal=causal), torch.bfloat16)
        out3, lse3, _ = emu_fwd(emu, q, k, v, causal=causal, **run)
        assert torch.equal(out, out3) and torch.equal(lse, lse3), f"2 and 3 consumers differ: {seqlen_q, seqlen_k}"
    q, k, v, cu_q, cu_k = _varlen([1, 33, 130, 140], [130, 0, 33, 140], 2, 1, 64, torch.bfloat16)
    options = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse, _ = emu_fwd(emu_two_consumers, q, k, v, max_seqlen_q=140, max_seqlen_k=140, variant="_two_consumers",
                          registers=TWO_CONSUMER_REGISTERS, **options, **run)
    assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options), torch.bfloat16)


def _check_n176(emu_n176, batch, seqlen_q, seqlen_k, heads_q, heads_kv, dtype, run, **options):
    check_fwd(emu_n176, batch, seqlen_q, seqlen_k, heads_q, heads_kv, 128, dtype,
              run=dict(variant="_n176", **run), **options)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_d128_n176_switch_seqlens(emu_n176, dtype, causal):
    """-DFLASHCORE_FWD_SM90_D128_N176 (the GPU bisecting switch to 128 x 176 tiles at D=128, output staged in Q's
    buffer): key lengths just below, at and above multiples of 176 (the last tile 1 key, full, or the TMA box past
    the end), and query blocks of 128 rows whose causal diagonal crosses 176-key tiles at varying offsets."""
    n = N176_BLOCK_N
    for seqlen_q, seqlen_k in [(1, 1), (1, 1000), (n - 1, n - 1), (n, n), (n + 1, 2 * n + 1), (2 * n + 1, n + 1),
                               (1000, 1000)]:
        _check_n176(emu_n176, 1, seqlen_q, seqlen_k, 2, 1, DTYPES[dtype], dict(num_sms=2), causal=causal)


def test_forward_d128_n176_switch_takes_effect(emu, emu_n176):
    """The switch's library really walks 176-key tiles: one query row against 1000 keys loads K and V (2 panels
    each, one TMA copy per panel: the model's only asynchronous operations besides the output store, which is the
    same in both builds) 8 times at 128 keys per tile and 6 times at 176."""
    q, k, v = random_qkv(1, 1, 1000, 1, 1, 128, torch.bfloat16)
    copies_per_tile = 2 * 2  # K and V, two 64-column panels each
    _, _, stats = emu_fwd(emu, q, k, v)
    out, lse, stats_n176 = emu_fwd(emu_n176, q, k, v, variant="_n176")
    assert_fwd_matches(out, lse, *reference_fwd(q, k, v), torch.bfloat16)
    tiles_128, tiles_176 = -(-1000 // 128), -(-1000 // N176_BLOCK_N)
    assert stats["async_ops"] - stats_n176["async_ops"] == copies_per_tile * (tiles_128 - tiles_176), \
        (stats, stats_n176)


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lazy_async", "priority_lazy_4"])
def test_forward_d128_n176_switch(emu_n176, interleaving):
    """The 176-key switch with window + softcap, GQA and varlen (sequences ending inside a 176-key tile, so a K/V
    box reads the next sequence's keys, which the mask must drop; partial query blocks store from registers, and Q's
    buffer is freed by the last store), under adversarial interleavings."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    _check_n176(emu_n176, 1, 400, 300, 2, 1, torch.bfloat16, run, window=(100, 50), softcap=30.0)
    _check_n176(emu_n176, 2, 200, 377, 4, 2, torch.float16, run, causal=True)
    _check_n176(emu_n176, 1, 130, 260, 3, 1, torch.bfloat16, run, window=(-1, 40))
    lens_q, lens_k = [1, 175, 176, 177, 300, 40], [176, 177, 1, 352, 190, 0]
    for causal, dtype in [(False, torch.bfloat16), (True, torch.float16)]:
        q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 2, 1, 128, dtype)
        options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        out, lse, _ = emu_fwd(emu_n176, q, k, v, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                              variant="_n176", **options, **run)
        assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options), dtype)


ITEM_PIPELINE_INTERLEAVINGS = ["random", "priority_1", "priority_2", "lowest_first", "highest_lazy", "lazy_async",
                               "priority_lazy_4"]


def _item_pipeline_fwd(emu_item_pipeline, q, k, v, **options):
    return emu_fwd(emu_item_pipeline, q, k, v, variant="_item_pipeline", **options)


@pytest.mark.parametrize("interleaving", ITEM_PIPELINE_INTERLEAVINGS)
@pytest.mark.parametrize("head_dim", sorted({d for d, _ in ITEM_PIPELINE_BUILDS}))
def test_forward_item_pipeline_switch(emu, emu_item_pipeline, head_dim, interleaving):
    """-DFLASHCORE_FWD_SM90_ITEM_PIPELINE (an item's tail turn also issues the next item's first S, and its epilogue
    runs under it; Q in two buffers): many short items per CTA (2 pretend SMs), so the tail turns, the Q buffers'
    alternation and the output buffer's reuse all cycle, with items of 1 key tile (the tail turn then also reads the
    item's only V tile) and of several. Each row still walks its key tiles in the same order with the same
    arithmetic, so the outputs are bit-identical to the default build's."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    for batch, seqlen_q, seqlen_k, causal in [(2, 512, 100, False), (1, 256, 700, True), (3, 130, 129, True)]:
        q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 2, 1, head_dim, torch.bfloat16)
        out, lse, _ = _item_pipeline_fwd(emu_item_pipeline, q, k, v, causal=causal, **run)
        assert_fwd_matches(out, lse, *reference_fwd(q, k, v, causal=causal), torch.bfloat16)
        out0, lse0, _ = emu_fwd(emu, q, k, v, causal=causal, **run)
        assert torch.equal(out, out0) and torch.equal(lse, lse0), f"not the default build's: {seqlen_q, seqlen_k}"


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lazy_async", "highest_lazy"])
@pytest.mark.parametrize("head_dim", sorted({d for d, _ in ITEM_PIPELINE_BUILDS}))
def test_forward_item_pipeline_switch_modes(emu_item_pipeline, head_dim, interleaving):
    """The pipelined build with tiles whose rows see no key between items that do (causal with seqlen_q > seqlen_k:
    the first query blocks; varlen sequences without keys), which the consumers skip while seeking the next item;
    window + softcap; GQA; varlen whose partial blocks store from registers; and a non-finite value in the next
    sequence's V rows, which consumer 0 must zero in the item's first V tile before the turn that reads it (here one
    turn after the item's first S, no longer before it)."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    dtype = torch.bfloat16
    for batch, seqlen_q, seqlen_k, heads, options in [(1, 400, 150, (2, 1), dict(causal=True)),
                                                       (1, 300, 260, (2, 1), dict(window=(60, 20), softcap=30.0)),
                                                       (2, 200, 333, (4, 2), dict(causal=True))]:
        q, k, v = random_qkv(batch, seqlen_q, seqlen_k, *heads, head_dim, dtype)
        out, lse, _ = _item_pipeline_fwd(emu_item_pipeline, q, k, v, **options, **run)
        assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options), dtype)
    lens_q, lens_k = [1, 70, 33, 130, 140, 50, 90], [130, 50, 0, 33, 140, 0, 90]
    q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 2, 1, head_dim, dtype)
    v[int(cu_k[2]) + 3, 0, 5] = float("inf")  # sequence 3's keys (sequence 2 has none): read by sequence 1's last tile
    for causal in (False, True):
        options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        out, lse, _ = _item_pipeline_fwd(emu_item_pipeline, q, k, v, max_seqlen_q=max(lens_q),
                                         max_seqlen_k=max(lens_k), **options, **run)
        for b in (0, 1, 2, 4, 5, 6):  # every sequence but the one holding the inf
            lo_q, hi_q, lo_k, hi_k = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            one_q = torch.tensor([0, hi_q - lo_q], dtype=torch.int32)
            one_k = torch.tensor([0, hi_k - lo_k], dtype=torch.int32)
            ref_out, ref_lse = reference_fwd(q[lo_q:hi_q], k[lo_k:hi_k], v[lo_k:hi_k], causal=causal,
                                             cu_seqlens_q=one_q, cu_seqlens_k=one_k)
            assert_fwd_matches(out[lo_q:hi_q], lse[:, lo_q:hi_q], ref_out, ref_lse, dtype)


def test_forward_item_pipeline_switch_fp16(emu_item_pipeline):
    """fp16 at D=128, several items per CTA, causal and not."""
    for causal in (False, True):
        check_fwd(emu_item_pipeline, 2, 300, 260, 2, 1, 128, torch.float16, causal=causal,
                  run=dict(variant="_item_pipeline", num_sms=2))


def test_forward_item_pipeline_switch_takes_effect(emu, emu_item_pipeline):
    """The switch's library really merges the item boundaries: every key tile is one ping-pong turn per consumer, plus
    one turn per item in the default build (its first S alone) but one per CTA in the pipelined one (the first item's).
    The model counts completed named barriers; the epilogues' and the exit's are the same in both builds, so the
    difference is (items - CTAs) x consumers exactly (static schedule: every CTA gets items)."""
    head_dim, consumers, block_m = 128, 2, 128  # csrc/tiles/sm90_fwd.h's row for D=128
    q, k, v = random_qkv(2, 700, 300, 2, 1, head_dim, torch.bfloat16)
    run = dict(num_sms=3, static=True)
    _, _, stats = emu_fwd(emu, q, k, v, **run)
    out, lse, stats_pipe = _item_pipeline_fwd(emu_item_pipeline, q, k, v, **run)
    assert_fwd_matches(out, lse, *reference_fwd(q, k, v), torch.bfloat16)
    items = 2 * 2 * -(-700 // block_m)
    assert stats["barriers"] - stats_pipe["barriers"] == (items - 3) * consumers, (stats, stats_pipe)


def test_forward_nan_propagates(emu):
    """A NaN key makes exactly the rows that see it NaN."""
    q, k, v = random_qkv(1, 64, 64, 1, 1, 64, torch.bfloat16)
    k[0, 40, 0, 3] = float("nan")
    out, _, _ = emu_fwd(emu, q, k, v, causal=True)
    assert out[0, :40].isfinite().all() and out[0, 40:].isnan().all()


@pytest.mark.parametrize("interleaving", INTERLEAVINGS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_forward_pipeline_interleavings(emu, head_dim, interleaving):
    """Key walks several laps around the K/V ring; then many short tiles per CTA (2 pretend SMs: the output staging
    buffer and Q are reused while the previous tile's stores may still read them), under each interleaving."""
    run = dict(num_sms=2, **INTERLEAVINGS[interleaving])
    check_fwd(emu, 1, 256, 700, 2, 1, head_dim, torch.bfloat16, run=run)
    check_fwd(emu, 2, 512, 100, 2, 1, head_dim, torch.bfloat16, run=run)


@pytest.mark.skipif(not FULL, reason="FLASHCORE_EMU_FULL=1: the larger forward sweep")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_sweep(emu, head_dim, dtype, causal):
    for seqlens in [(1, 300), (300, 1), (257, 383), (383, 257)]:
        check_fwd(emu, 2, *seqlens, 4, 2, head_dim, DTYPES[dtype], causal=causal, run=dict(num_sms=4, seed=3))
    check_fwd(emu, 1, 300, 300, 2, 1, head_dim, DTYPES[dtype], window=(50, 20), softcap=20.0)


# ------------------------------------------------------------------------------------------------ backward

def emu_bwd(emu, q, k, v, out, lse, dout, dlse=None, *, softmax_scale=None, causal=False, window=(-1, -1),
            softcap=0.0, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, deterministic=False,
            variant="", **run):
    """The backward's three kernels on the model; returns (dq, dk, dv, delta, stats). dq/dk/dv start as NaN.
    variant "_ss_dkv": the build with dV / dK's A operand from shared memory at every head dim."""
    varlen = cu_seqlens_q is not None
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    grads = [torch.full(t.shape, float("nan"), dtype=t.dtype) for t in (q, k, v)]
    lse = lse.contiguous()
    delta = torch.full(lse.shape, float("nan"), dtype=torch.float32)
    batch = len(cu_seqlens_q) - 1 if varlen else q.shape[0]
    bf16 = q.dtype == torch.bfloat16
    fn = getattr(emu, f"emu_sm90_bwd_d{d}_{_type_name(q.dtype)}{variant}")
    stats = _call(fn, *_views((q, k, v, out, dout, *grads)), _ptr(lse), _ptr(dlse), _ptr(delta), _ptr(cu_seqlens_q),
                  _ptr(cu_seqlens_k), batch, max_seqlen_q, max_seqlen_k, ctypes.c_float(scale), int(causal),
                  window[0], 0 if causal else window[1], ctypes.c_float(softcap), int(deterministic),
                  ctypes.byref(_run(_registers(f"bwd_sm90_kernelILi{d}ELNS_8HalfTypeE{int(bf16)}E"), **run)))
    return (*grads, delta, stats)


def _delta_ref(out, dout, dlse, varlen):
    d = (dout.double() * out.double()).sum(-1)  # (b, s, h) or (total, h)
    d = d.transpose(0, 1) if varlen else d.permute(0, 2, 1)
    return d - dlse.double() if dlse is not None else d


def check_bwd(emu, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, *, with_dlse=True, run=None,
              deterministic=False, **options):
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype)
    dout = torch.randn(batch, seqlen_q, heads_q, head_dim).to(dtype)
    out, lse = forward_for(q, k, v, **options)
    dlse = torch.randn(lse.shape) if with_dlse else None
    *got, delta, stats = emu_bwd(emu, q, k, v, out, lse, dout, dlse, deterministic=deterministic, **options,
                                 **(run or {}))
    torch.testing.assert_close(delta.double(), _delta_ref(out, dout, dlse, False), rtol=1e-4, atol=1e-4)
    want = reference_bwd(q, k, v, out, lse, dout, dlse, **options)
    assert_grads_match(got, want, dtype)
    return got, stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_backward_head_dims(emu, head_dim, dtype):
    check_bwd(emu, 1, 70, 150, 2, 1, head_dim, DTYPES[dtype], causal=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 1), (1, 17), (17, 1), (17, 17), (200, 77), (77, 200)])
def test_backward_ragged_seqlens(emu, seqlens, causal):
    check_bwd(emu, 1, *seqlens, 2, 1, 64, torch.bfloat16, causal=causal)


@pytest.mark.parametrize("window", [(16, 8), (0, 0), (40, -1), (-1, 5), (2**31 - 1, 3), (3, 2**31 - 1)])
@pytest.mark.parametrize("seqlens", [(130, 150), (150, 130)])
def test_backward_window(emu, window, seqlens):
    check_bwd(emu, 1, *seqlens, 1, 1, 128, torch.bfloat16, window=window)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_softcap(emu, dtype):
    """Both softcap forms: tanh in a pass of its own over S^T (D = 64, 128, 192) and per score (D = 96, where the
    pass spilled: BwdConfig::kSoftcapPass)."""
    check_bwd(emu, 1, 100, 140, 2, 1, 64, DTYPES[dtype], causal=True, softcap=2.0)
    check_bwd(emu, 1, 33, 70, 1, 1, 192, DTYPES[dtype], window=(20, 10), softcap=30.0)
    check_bwd(emu, 1, 70, 90, 2, 2, 96, DTYPES[dtype], softcap=5.0)
    check_bwd(emu, 1, 65, 130, 1, 1, 128, DTYPES[dtype], causal=True, softcap=3.0)


@pytest.mark.parametrize("heads", [(4, 2), (3, 1)])
def test_backward_gqa_mqa(emu, heads):
    """dK/dV of a K/V head sum over its group's query heads (the CTA walks them itself)."""
    check_bwd(emu, 2, 40, 150, *heads, 96, torch.bfloat16, causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0, 1.5])
def test_backward_scale(emu, scale):
    check_bwd(emu, 1, 50, 90, 2, 1, 64, torch.bfloat16, softmax_scale=scale, causal=True)


def test_backward_no_dlse_strided(emu):
    """No dlse; q, k, v as views of one packed tensor."""
    dtype = torch.float16
    qkv = torch.randn(2, 70, 3, 2, 128).to(dtype)
    q, k, v = qkv.unbind(2)
    dout = torch.randn(q.shape).to(dtype)
    out, lse = forward_for(q, k, v)
    *got, _, _ = emu_bwd(emu, q, k, v, out, lse, dout)
    assert_grads_match(got, reference_bwd(q, k, v, out, lse, dout, None), dtype)


@pytest.mark.parametrize("head_dim", [64, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_varlen(emu, head_dim, causal):
    """Sequences of lengths (q, k): (1, 130), (0, 5) -> dk = dv = 0, (33, 0) -> dq = 0, (130, 33), (17, 17);
    deterministic when causal. Not causal: dQ by TMA reduce-add at D = 64 and 192 (tiles overhang into the next
    sequence's rows, adding zeros there; the last one past total_q, clipped by the map), red.global at D = 256."""
    check_bwd_varlen(emu, head_dim, causal)


def check_bwd_varlen(emu, head_dim, causal, run=None):
    lens_q, lens_k = [1, 0, 33, 130, 17], [130, 5, 0, 33, 17]
    dtype = torch.bfloat16
    q, k, v, cu_q, cu_k = _varlen(lens_q, lens_k, 2, 1, head_dim, dtype)
    dout = torch.randn(q.shape).to(dtype)
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse = forward_for(q, k, v, **options)
    dlse = torch.randn(lse.shape)
    *got, delta, _ = emu_bwd(emu, q, k, v, out, lse, dout, dlse, max_seqlen_q=max(lens_q),
                             max_seqlen_k=max(lens_k), deterministic=causal, **options, **(run or {}))
    torch.testing.assert_close(delta.double(), _delta_ref(out, dout, dlse, True), rtol=1e-4, atol=1e-4)
    assert_grads_match(got, reference_bwd(q, k, v, out, lse, dout, dlse, **options), dtype)
    assert torch.equal(got[1][130:135], torch.zeros_like(got[1][130:135]))  # keys of the query-less sequence
    assert torch.equal(got[2][130:135], torch.zeros_like(got[2][130:135]))
    assert torch.equal(got[0][1:34], torch.zeros_like(got[0][1:34]))        # queries of the key-less sequence


@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
def test_backward_non_finite_block_keeps_out_of_other_dq(emu, head_dim):
    """An inf in one sequence's V makes its own gradients non-finite; the query tile that runs past that sequence's
    end covers the next batch's rows of dq_accum (dense) or the next sequence's (varlen), where the kernel must add
    nothing: those rows' dS is 0 * inf = NaN (the LSE / delta rows loaded there are the non-finite sequence's).
    Dense: the next batch's gradients are all exact, and, with the inf in batch 1, batch 0's. Varlen too: the last
    sequence's tile past its end reads the next head's delta rows, sequence 0's (inf), which the kernel zeroes
    before dS = P (dP - delta) takes them."""
    dtype = torch.bfloat16
    q, k, v = random_qkv(2, 70, 70, 2, 1, head_dim, dtype)  # 70: batch 0's second tile covers batch 1's rows
    v[0, 3, 0, 5] = float("inf")
    dout = torch.randn(q.shape).to(dtype)
    out, lse = forward_for(q, k, v)
    dq, dk, dv, _, _ = emu_bwd(emu, q, k, v, out, lse, dout)
    want = reference_bwd(q[1:], k[1:], v[1:], out[1:], lse[1:], dout[1:], None)
    assert_grads_match((dq[1:], dk[1:], dv[1:]), want, dtype)
    # The other way round: batch 0's last head's last tile reads batch 1's first delta rows (the flat 2D map), inf
    # when every query of batch 1 sees the inf; the kernel zeroes them (dense too) before dS takes them.
    v = v.clone()
    v[0, 3, 0, 5] = 0.0
    v[1, 0, 0, 5] = float("inf")
    out, lse = forward_for(q, k, v)
    dq, dk, dv, _, _ = emu_bwd(emu, q, k, v, out, lse, dout)
    want = reference_bwd(q[:1], k[:1], v[:1], out[:1], lse[:1], dout[:1], None)
    assert_grads_match((dq[:1], dk[:1], dv[:1]), want, dtype)
    lens = [70, 60]
    q, k, v, cu_q, cu_k = _varlen(lens, lens, 2, 1, head_dim, dtype)
    v[3, 0, 5] = float("inf")  # a key of sequence 0
    dout = torch.randn(q.shape).to(dtype)
    options = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse = forward_for(q, k, v, **options)
    dq, dk, dv, _, _ = emu_bwd(emu, q, k, v, out, lse, dout, max_seqlen_q=70, max_seqlen_k=70, **options)
    one = torch.tensor([0, 60], dtype=torch.int32)
    want = reference_bwd(q[70:], k[70:], v[70:], out[70:], lse[:, 70:], dout[70:], None, cu_seqlens_q=one,
                         cu_seqlens_k=one)
    assert_grads_match((dq[70:], dk[70:], dv[70:]), want, dtype)


@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("where", ["kv", "q_do"])
@pytest.mark.parametrize("interleaving", ["random", "lowest_first", "highest_first"])
def test_backward_varlen_non_finite_neighbour(emu, head_dim, causal, where, interleaving):
    """A packed batch whose middle sequence (rows 70..119) holds non-finite values in one column of every row (so
    that both consumers' shares of the zeroing matter): "kv" an inf in V and a NaN in K, "q_do" an inf in Q (head
    0) and in dO (head 1); its delta rows turn non-finite too. Sequence 0's key block and
    last query tile run past its end (at every block_n, 128 or 64) and load those rows, masked (P = 0, dS = 0), but
    0 x inf = NaN in the tensor cores unless the kernel zeroes the K / V rows past seqlen_k, and the Q / dO rows
    (and delta) past seqlen_q. Sequences 0 and 2 must match their own references as if alone; sequence 1 is NaN.
    The greedy schedules run one consumer far ahead of the other: they fail (D = 64 / 128) without the barriers
    that order both consumers' zeros before every wgmma."""
    dtype = torch.bfloat16
    lens = [70, 50, 90]
    q, k, v, cu_q, cu_k = _varlen(lens, lens, 2, 1, head_dim, dtype)
    dout = torch.randn(q.shape).to(dtype)
    if where == "kv":
        v[70:120, 0, 5] = float("inf")
        k[70:120, 0, 3] = float("nan")
    else:
        q[70:120, 0, 7] = float("inf")
        dout[70:120, 1, 2] = float("inf")
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse = forward_for(q, k, v, **options)
    dq, dk, dv, _, _ = emu_bwd(emu, q, k, v, out, lse, dout, max_seqlen_q=max(lens), max_seqlen_k=max(lens),
                               **options, **INTERLEAVINGS[interleaving])
    for b in (0, 2):
        lo, hi = int(cu_q[b]), int(cu_q[b + 1])
        one = torch.tensor([0, hi - lo], dtype=torch.int32)
        want = reference_bwd(q[lo:hi], k[lo:hi], v[lo:hi], out[lo:hi], lse[:, lo:hi], dout[lo:hi], None,
                             causal=causal, cu_seqlens_q=one, cu_seqlens_k=one)
        assert_grads_match((dq[lo:hi], dk[lo:hi], dv[lo:hi]), want, dtype)
    assert dk[70:120].isnan().any()


def test_backward_unseen_keys_and_empty_rows(emu):
    """A window that leaves keys 0..274 unseen: their dK = dV = 0 exactly. seqlen_q > seqlen_k with causal: the
    first rows see no key (lse = -inf) and contribute nothing (dQ = 0) even with a nonzero dlse."""
    got, _ = check_bwd(emu, 1, 20, 300, 1, 1, 64, torch.bfloat16, window=(5, 0))
    assert torch.equal(got[1][0, :275], torch.zeros_like(got[1][0, :275]))
    assert torch.equal(got[2][0, :275], torch.zeros_like(got[2][0, :275]))
    assert got[1][0, 275:].abs().sum() > 0
    got, _ = check_bwd(emu, 1, 150, 40, 1, 1, 64, torch.bfloat16, causal=True)
    assert torch.equal(got[0][0, :110], torch.zeros_like(got[0][0, :110]))


def test_backward_large_non_persistent_grids(emu):
    """Grids larger than the model holds at once (24 K threads) run in waves: the preprocess at batch 2, seqlen 400,
    6 heads (156 CTAs of 256 threads) and, at 16 pretend SMs, the dq convert (128 CTAs of 256 threads)."""
    check_bwd(emu, 2, 400, 200, 6, 2, 64, torch.bfloat16, causal=True, run=dict(num_sms=16))


@pytest.mark.parametrize("head_dim", [64, 192, 256])
def test_backward_deterministic_bit_identical(emu, head_dim):
    """Deterministic mode adds dQ in a fixed order: the same bits across seeds, interleavings, SM counts and tile
    schedules (several CTAs add into each query tile: 3 key blocks per sequence). D = 64 / 192 add by TMA, each
    consumer passing the tile's turn on a tile later, once its adds complete (under the lazy copy engine a release
    before completion lets the next block's adds land first); D = 256 with ordered loads / stores."""
    dtype = torch.bfloat16
    q, k, v = random_qkv(2, 150, 300, 2, 1, head_dim, dtype)
    dout = torch.randn(q.shape).to(dtype)
    out, lse = forward_for(q, k, v, causal=True)
    first = None
    for run in (dict(), dict(seed=5), dict(schedule=ROUND_ROBIN), dict(num_sms=1), dict(num_sms=2),
                dict(num_sms=4, seed=9), dict(num_sms=8), dict(static=True, seed=3), dict(static=True, num_sms=2),
                dict(schedule=RANDOM_PRIORITY, seed=2), dict(schedule=RANDOM_PRIORITY, max_async_delay=LAZY_ASYNC),
                dict(schedule=LOWEST_FIRST), dict(schedule=HIGHEST_FIRST, max_async_delay=LAZY_ASYNC)):
        dq, dk, dv, _, _ = emu_bwd(emu, q, k, v, out, lse, dout, causal=True, deterministic=True, **run)
        if first is None:
            first = (dq, dk, dv)
            assert_grads_match(first, reference_bwd(q, k, v, out, lse, dout, None, causal=True), dtype)
        else:
            for name, a, b in zip(("dq", "dk", "dv"), first, (dq, dk, dv)):
                assert torch.equal(a, b), f"{name} differs with {run}"


@pytest.mark.parametrize("interleaving", INTERLEAVINGS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_backward_pipeline_interleavings(emu, head_dim, interleaving):
    """Query walks several laps around the Q / dO ring, several K/V blocks per CTA, under each interleaving."""
    check_bwd(emu, 1, 400, 300, 2, 1, head_dim, torch.bfloat16, causal=True,
              run=dict(num_sms=2, **INTERLEAVINGS[interleaving]))


@pytest.mark.parametrize("interleaving", ["random", "priority_1", "lowest_first", "priority_lazy_4"])
@pytest.mark.parametrize("head_dim", SS_DKV_HEAD_DIMS)
def test_backward_ss_dkv_switch(emu_switches, head_dim, interleaving):
    """-DFLASHCORE_BWD_SM90_SS_DKV (the GPU bisecting switch): P^T staged in shared memory and dV / dK as SS
    GEMMs at the head dims that take their A operand from registers by default; causal, and ragged GQA."""
    run = dict(num_sms=2, variant="_ss_dkv", **INTERLEAVINGS[interleaving])
    check_bwd(emu_switches, 1, 200, 150, 2, 1, head_dim, torch.bfloat16, causal=True, run=run)
    check_bwd(emu_switches, 2, 77, 130, 4, 2, head_dim, torch.bfloat16, run=run)


@pytest.mark.parametrize("interleaving", ["random", "round_robin", "priority_1", "priority_2", "lowest_first",
                                          "highest_lazy", "priority_lazy_4"])
@pytest.mark.parametrize("head_dim", sorted({d for d, _ in DQ_LAG_BUILDS}))
def test_backward_dq_lag_switch(emu_dq_lag, head_dim, interleaving):
    """-DFLASHCORE_BWD_SM90_DQ_LAG (bwd_sm90.md v3): each tile's dQ one tile later, from a second dS^T buffer, the
    consumers signalling each other one way. Causal with several K/V blocks and heads per CTA (the lag crosses
    heads inside an item and is flushed at each item's end), and ragged GQA."""
    lib, variant = emu_dq_lag
    run = dict(num_sms=2, variant=variant, **INTERLEAVINGS[interleaving])
    check_bwd(lib, 1, 200, 150, 2, 1, head_dim, torch.bfloat16, causal=True, run=run)
    check_bwd(lib, 2, 77, 130, 4, 2, head_dim, torch.bfloat16, run=run)


@pytest.mark.parametrize("head_dim", sorted({d for d, _ in DQ_LAG_BUILDS}))
def test_backward_dq_lag_switch_modes(emu, emu_dq_lag, head_dim):
    """The lagged dQ under the deterministic turns (bit-identical to the default build's, across interleavings, the
    static schedule and one SM), softcap + window on one SM (every item through one CTA: the lag's buffers and
    barriers carried across items), and varlen (empty sequences, a one-row one; deterministic when causal)."""
    lib, variant = emu_dq_lag
    dtype = torch.bfloat16
    q, k, v = random_qkv(1, 300, 260, 2, 1, head_dim, dtype)
    dout = torch.randn(q.shape).to(dtype)
    out, lse = forward_for(q, k, v, causal=True)
    # The same adds in the same order as the default build, only later: the same bits.
    want = emu_bwd(emu, q, k, v, out, lse, dout, causal=True, deterministic=True, num_sms=3)[:3]
    assert_grads_match(want, reference_bwd(q, k, v, out, lse, dout, None, causal=True), dtype)
    for run in (dict(seed=5), dict(schedule=ROUND_ROBIN, static=True), dict(num_sms=1),
                dict(schedule=RANDOM_PRIORITY, seed=2, max_async_delay=LAZY_ASYNC)):
        got = emu_bwd(lib, q, k, v, out, lse, dout, causal=True, deterministic=True, variant=variant,
                      **{"num_sms": 3, **run})[:3]
        for name, x, y in zip(("dq", "dk", "dv"), want, got):
            assert torch.equal(x, y), f"{name} differs from the default build with {run}"
    check_bwd(lib, 1, 190, 250, 2, 2, head_dim, torch.bfloat16, window=(40, 7), softcap=15.0,
              run=dict(num_sms=1, variant=variant))
    for causal in (False, True):
        check_bwd_varlen(lib, head_dim, causal, run=dict(num_sms=2, variant=variant))


@pytest.mark.parametrize("head_dim", [128])
def test_backward_dq_lag_switch_fp16(emu_dq_lag, head_dim):
    lib, variant = emu_dq_lag
    check_bwd(lib, 2, 150, 140, 2, 1, head_dim, torch.float16, causal=True, run=dict(num_sms=2, variant=variant))


@pytest.mark.skipif(not FULL, reason="FLASHCORE_EMU_FULL=1: the larger backward sweep")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_backward_sweep(emu, head_dim, dtype, causal):
    for seqlens in [(1, 300), (300, 1), (257, 383), (383, 257)]:
        check_bwd(emu, 2, *seqlens, 4, 2, head_dim, DTYPES[dtype], causal=causal, run=dict(num_sms=4, seed=3))
    check_bwd(emu, 1, 300, 300, 2, 1, head_dim, DTYPES[dtype], window=(50, 20), softcap=20.0, deterministic=True)


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ_CASES = int(os.environ.get("FLASHCORE_EMU_FUZZ", "0"))


def _fuzz_case(rng):
    """A random attention problem: shapes, masks, softcap, dtype, varlen, and how the model runs it."""
    head_dim = rng.choice(HEAD_DIMS)
    heads_kv = rng.choice([1, 2])
    heads_q = heads_kv * rng.choice([1, 2, 3])
    lengths = [1, 2, 17, 63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 400]
    window = rng.choice([(-1, -1), (-1, 0), (rng.randrange(0, 300), rng.randrange(0, 300)), (rng.randrange(0, 50), -1),
                         (-1, rng.randrange(0, 50)), (2**31 - 1, rng.randrange(0, 10))])
    options = dict(window=window, softcap=rng.choice([0.0, 0.0, 5.0, 30.0]),
                   softmax_scale=rng.choice([None, None, -0.3, 0.05]))
    run = dict(num_sms=rng.choice([1, 2, 3, 5]), seed=rng.randrange(1, 1 << 30),
               schedule=rng.choice([RANDOM, ROUND_ROBIN, RANDOM_PRIORITY, LOWEST_FIRST, HIGHEST_FIRST]),
               max_async_delay=rng.choice([64, 64, LAZY_ASYNC]), static=rng.random() < 0.2)
    dtype = rng.choice(list(DTYPES.values()))
    if rng.random() < 0.3:
        count = rng.randrange(1, 4)
        shape = dict(lens_q=[rng.choice(lengths + [0]) for _ in range(count)],
                     lens_k=[rng.choice(lengths + [0]) for _ in range(count)])
    else:
        shape = dict(batch=rng.choice([1, 2]), seqlen_q=rng.choice(lengths), seqlen_k=rng.choice(lengths))
    return head_dim, heads_q, heads_kv, dtype, shape, options, run


def _fuzz_inputs(shape, heads_q, heads_kv, head_dim, dtype):
    """q, k, v and the varlen / size arguments of a fuzz case's shape."""
    if "lens_q" in shape:
        q, k, v, cu_q, cu_k = _varlen(shape["lens_q"], shape["lens_k"], heads_q, heads_kv, head_dim, dtype)
        return (q, k, v, dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k),
                dict(max_seqlen_q=max(shape["lens_q"]), max_seqlen_k=max(shape["lens_k"])))
    q, k, v = random_qkv(shape["batch"], shape["seqlen_q"], shape["seqlen_k"], heads_q, heads_kv, head_dim, dtype)
    return q, k, v, {}, {}


def _fuzz_cases(builds=None):
    """FLASHCORE_EMU_FUZZ random problems from one base seed (FLASHCORE_TEST_SEED, else drawn): (rng, a description
    naming the case's seed, then _fuzz_case's fields). builds: only the (head_dim, bf16) pairs a library holds."""
    import random

    base = int(os.environ.get("FLASHCORE_TEST_SEED", "0")) or random.randrange(1 << 30)
    for case in range(FUZZ_CASES):
        rng = random.Random(base + case)
        head_dim, heads_q, heads_kv, dtype, shape, options, run = _fuzz_case(rng)
        if builds is not None and (head_dim, int(dtype == torch.bfloat16)) not in builds:
            continue
        where = f"case {base + case}: D={head_dim} heads={heads_q}/{heads_kv} {dtype} {shape} {options} {run}"
        yield rng, where, head_dim, heads_q, heads_kv, dtype, shape, options, run


@pytest.mark.skipif(FUZZ_CASES == 0, reason="FLASHCORE_EMU_FUZZ=<cases>: random problems, the v3 backward builds")
def test_fuzz_backward_dq_lag(emu_dq_lag):
    """The fuzz cases whose head dim and dtype a lagged-dQ library holds, backward only."""
    lib, variant = emu_dq_lag
    ran = 0
    for rng, where, head_dim, heads_q, heads_kv, dtype, shape, options, run in _fuzz_cases(DQ_LAG_BUILDS):
        q, k, v, varlen, sizes = _fuzz_inputs(shape, heads_q, heads_kv, head_dim, dtype)
        if q.shape[-3] == 0 or k.shape[-3] == 0:
            continue  # the extension returns zeros without a launch
        ref_out, ref_lse = reference_fwd(q, k, v, **options, **varlen)
        out16, lse32 = ref_out.to(dtype), ref_lse.float()
        dout = torch.randn(q.shape).to(dtype)
        dlse = torch.randn(lse32.shape)
        try:
            *got, _, _ = emu_bwd(lib, q, k, v, out16, lse32, dout, dlse, deterministic=rng.random() < 0.3,
                                 variant=variant, **options, **varlen, **sizes, **run)
            assert_grads_match(got, reference_bwd(q, k, v, out16, lse32, dout, dlse, **options, **varlen), dtype)
        except (AssertionError, RuntimeError) as exc:
            raise AssertionError(f"{where}: {exc}") from None
        ran += 1
    assert ran > 0 or FUZZ_CASES < 8, "no fuzz case had a lagged build's head dim and dtype"


@pytest.mark.skipif(FUZZ_CASES == 0, reason="FLASHCORE_EMU_FUZZ=<cases>: random problems, the item-pipelined build")
def test_fuzz_forward_item_pipeline(emu_item_pipeline):
    """The fuzz cases whose head dim and dtype the item-pipelined library holds, forward only."""
    ran = 0
    for _, where, head_dim, heads_q, heads_kv, dtype, shape, options, run in _fuzz_cases(ITEM_PIPELINE_BUILDS):
        q, k, v, varlen, sizes = _fuzz_inputs(shape, heads_q, heads_kv, head_dim, dtype)
        if q.numel() == 0:
            continue  # the extension returns the empty outputs without a launch
        try:
            out, lse, _ = _item_pipeline_fwd(emu_item_pipeline, q, k, v, **options, **varlen, **sizes, **run)
            assert_fwd_matches(out, lse, *reference_fwd(q, k, v, **options, **varlen), dtype)
        except (AssertionError, RuntimeError) as exc:
            raise AssertionError(f"{where}: {exc}") from None
        ran += 1
    assert ran > 0 or FUZZ_CASES < 8, "no fuzz case had the item-pipelined build's head dim and dtype"


@pytest.mark.skipif(FUZZ_CASES == 0, reason="FLASHCORE_EMU_FUZZ=<cases>: random problems, forward and backward")
def test_fuzz(emu):
    for rng, where, head_dim, heads_q, heads_kv, dtype, shape, options, run in _fuzz_cases():
        try:
            q, k, v, varlen, sizes = _fuzz_inputs(shape, heads_q, heads_kv, head_dim, dtype)
            if q.numel() == 0:
                continue  # the extension returns the empty outputs without a launch
            out, lse, _ = emu_fwd(emu, q, k, v, **options, **varlen, **sizes, **run)
            ref_out, ref_lse = reference_fwd(q, k, v, **options, **varlen)
            assert_fwd_matches(out, lse, ref_out, ref_lse, dtype)
            if k.shape[-3] == 0 or q.shape[-3] == 0:
                continue  # the extension returns zeros without a launch
            dout = torch.randn(q.shape).to(dtype)
            out16, lse32 = ref_out.to(dtype), ref_lse.float()
            dlse = torch.randn(lse32.shape)
            *got, _, _ = emu_bwd(emu, q, k, v, out16, lse32, dout, dlse, deterministic=rng.random() < 0.3, **options,
                                 **varlen, **sizes, **run)
            assert_grads_match(got, reference_bwd(q, k, v, out16, lse32, dout, dlse, **options, **varlen), dtype)
        except (AssertionError, RuntimeError) as exc:
            raise AssertionError(f"{where}: {exc}") from None
