"""The gfx942 kernels, executed lane by lane on the CPU (csrc/hip_emu), against independent references.

The harness compiles the same kernel source as the HIP build, for the host (g++ -std=c++20 -O2), and runs every
work-item as a fiber; MFMA and the other wave-level instructions are 64-lane rendezvous that reproduce the
hardware's lane layouts (csrc/hip_emu/emu.h). It is built once per session into the pytest temp dir and loaded
with ctypes. What is checked here:
- each MFMA, for every lane and register, against a float64 matrix product laid out by this file's own copy of
  the CDNA3 operand tables (so the harness, csrc/hip/mfma.h and this file must agree three ways);
- the MFMA probe kernel (row-major in, row-major out) against A @ B + C;
- the LDS bank model (csrc/hip/lds.h) on hand-made patterns, then every LDS access of the forward kernel,
  replayed with the kernel's own address functions: zero bank conflicts;
- the forward kernel (csrc/hip/fwd_kernel.h, FwdParams built by the extension's make_fwd_params) against
  flashcore.reference in float64 over head dims x dtypes, ragged seqlens, causal, windows, softcap, GQA/MQA,
  varlen, strided views, negative scale and NaN inputs; with every global access bounds-checked by the harness
  and out/lse pre-filled with NaN so an unwritten row fails.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest
import torch
from emu_build import compile_objects, compiler, link_library
from emu_checks import assert_fwd_matches, random_qkv, reference_fwd

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# (source, extra flags): the forward harness once per element type, so the objects compile in parallel
HARNESS_SOURCES = [("emu_common/fiber.cpp", []), ("hip_emu/emu.cpp", []), ("hip_emu/harness_mfma.cpp", []), ("hip_emu/harness_lds.cpp", []),
                   ("hip_emu/harness_fwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Bf16"]),
                   ("hip_emu/harness_fwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Fp16"])]
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_HIP_EMU", "-Wno-psabi", f"-I{CSRC}"]


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The harness library, built once per session (one object file per source, compiled in parallel)."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    out = tmp_path_factory.mktemp("hip_emu")
    start = time.monotonic()
    jobs = [(CSRC / source, [*CXX_FLAGS, *flags, "-x", "c++"]) for source, flags in HARNESS_SOURCES]
    objects = compile_objects(cxx, jobs, out, "the CPU harness")
    library = link_library(cxx, objects, out / "libflashcore_hip_emu.so", "the CPU harness")
    print(f"CPU harness built in {time.monotonic() - start:.1f} s")
    return ctypes.CDLL(str(library))


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _call(fn, *args) -> None:
    error = ctypes.create_string_buffer(512)
    rc = fn(*args, error, ctypes.c_int(len(error)))
    assert rc == 0, error.value.decode()


# ------------------------------------------------------------------------------------------------ MFMA layouts
# This file's own copy of the CDNA3 operand tables (M = N; K = 4 * 64 / M), as HARDWARE.md states them and AMD's
# matrix instruction calculator prints them for v_mfma_f32_{32x32x8,16x16x16}_{bf16,f16}.

def a_index(m: int, lane: int, i: int) -> tuple[int, int]:
    return lane % m, 4 * (lane // m) + i


def b_index(m: int, lane: int, i: int) -> tuple[int, int]:
    return 4 * (lane // m) + i, lane % m


def c_index(m: int, lane: int, r: int) -> tuple[int, int]:
    if m == 32:
        return 8 * (r // 4) + 4 * (lane // 32) + r % 4, lane % 32
    return 4 * (lane // 16) + r, lane % 16


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _random_half(shape, dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [32, 16])
def test_mfma_every_lane_matches_matrix_product(emu, m, dtype):
    """Random registers in every lane; the emulated MFMA's per-lane results equal A @ B + C laid out per lane."""
    k, acc = 4 * 64 // m, m * m // 64
    a_regs = _random_half((64, 4), DTYPES[dtype])   # lane l's 4 operand elements, in register order
    b_regs = _random_half((64, 4), DTYPES[dtype])
    c_regs = torch.randn(64, acc, dtype=torch.float32)
    d_regs = torch.full((64, acc), float("nan"), dtype=torch.float32)
    _call(emu.emu_mfma_lanes, m, int(dtype == "bf16"), _ptr(a_regs), _ptr(b_regs), _ptr(c_regs), _ptr(d_regs))

    a = torch.full((m, k), float("nan"), dtype=torch.float64)
    b = torch.full((k, m), float("nan"), dtype=torch.float64)
    c = torch.full((m, m), float("nan"), dtype=torch.float64)
    for lane in range(64):
        for i in range(4):
            a[a_index(m, lane, i)] = a_regs[lane, i].double()
            b[b_index(m, lane, i)] = b_regs[lane, i].double()
        for r in range(acc):
            c[c_index(m, lane, r)] = c_regs[lane, r].double()
    assert not (a.isnan().any() or b.isnan().any() or c.isnan().any()), "layout does not cover the matrices"
    d = a @ b + c
    for lane in range(64):
        for r in range(acc):
            want = d[c_index(m, lane, r)].item()
            got = d_regs[lane, r].item()
            assert abs(got - want) <= 1e-6 * (1 + abs(want)), f"lane {lane} register {r}: {got} != {want}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [32, 16])
def test_mfma_probe_kernel(emu, m, dtype):
    """csrc/hip/probe/mfma_probe.hip places row-major matrices with csrc/hip/mfma.h's layouts: D = A @ B + C."""
    k = 4 * 64 // m
    a = _random_half((m, k), DTYPES[dtype])
    b = _random_half((k, m), DTYPES[dtype])
    c = torch.randn(m, m, dtype=torch.float32)
    d = torch.full((m, m), float("nan"), dtype=torch.float32)
    _call(emu.emu_mfma_probe, m, int(dtype == "bf16"), _ptr(a), _ptr(b), _ptr(c), _ptr(d))
    want = a.double() @ b.double() + c.double()
    torch.testing.assert_close(d.double(), want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ forward kernel

def emu_fwd(emu, q, k, v, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0, cu_seqlens_q=None,
            cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, os_threads=2, schedule=0):
    """csrc/hip/fwd_kernel.h in the harness. Dense q (b, sq, hq, d) or varlen q (total, hq, d) with cu_seqlens;
    returns (out, lse, stats). out and lse start as NaN, so a row the kernel does not write fails the comparison.
    schedule: the order the harness runs a block's lanes in (0 round robin, 1 / 2 one wave at a time)."""
    varlen = cu_seqlens_q is not None
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    lse_shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    lse = torch.full(lse_shape, float("nan"), dtype=torch.float32)
    tensors = (ctypes.c_void_p * 4)(*(t.data_ptr() for t in (q, k, v, out)))
    sizes = (ctypes.c_int64 * 16)(*[x for t in (q, k, v, out) for x in list(t.shape) + [1] * (4 - t.dim())])
    strides = (ctypes.c_int64 * 16)(*[x for t in (q, k, v, out) for x in list(t.stride()) + [1] * (4 - t.dim())])
    dims = (ctypes.c_int * 4)(*(t.dim() for t in (q, k, v, out)))
    stats = (ctypes.c_uint64 * 4)()
    batch = len(cu_seqlens_q) - 1 if varlen else q.shape[0]
    fn = emu.emu_fwd_Bf16 if q.dtype == torch.bfloat16 else emu.emu_fwd_Fp16
    cu = [ctypes.c_void_p(t.data_ptr()) if t is not None else None for t in (cu_seqlens_q, cu_seqlens_k)]
    _call(fn, tensors, sizes, strides, dims, _ptr(lse), ctypes.c_int64(lse.numel()), cu[0], cu[1], batch,
          max_seqlen_q, max_seqlen_k, ctypes.c_float(scale), int(causal), window[0], 0 if causal else window[1],
          ctypes.c_float(softcap), os_threads, schedule, stats)
    return out, lse, dict(zip(("blocks", "fiber_switches", "wave_collectives", "barriers"), stats))


def check_dense(emu, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, schedule=0, **options):
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype)
    out, lse, stats = emu_fwd(emu, q, k, v, schedule=schedule, **options)
    ref_out, ref_lse = reference_fwd(q, k, v, **options)
    assert_fwd_matches(out, lse, ref_out, ref_lse, dtype)
    return stats


# ------------------------------------------------------------------------------------------------ LDS banks

def _degree(emu, offsets, width, read):
    arr = (ctypes.c_int64 * 64)(*offsets)
    return emu.emu_lds_conflict_degree(arr, width, int(read))


def test_lds_bank_model(emu):
    """The phase model: consecutive 16-byte writes are free; a 256-byte row stride read by every lane conflicts
    8 ways; only lanes of one ds_read_b128 phase ({0-3, 20-23}, ...) can conflict with each other."""
    assert _degree(emu, [16 * l for l in range(64)], 16, False) == 1
    assert _degree(emu, [256 * l for l in range(64)], 16, True) == 8
    assert _degree(emu, [8 * l for l in range(64)], 8, False) == 1
    assert _degree(emu, [128 * l for l in range(64)], 8, False) == 16
    same_bank = [-1] * 64
    same_bank[0], same_bank[4] = 0, 128      # different read phases: no conflict
    assert _degree(emu, same_bank, 16, True) == 1
    same_bank[4], same_bank[20] = -1, 128    # lanes 0 and 20 share a phase
    assert _degree(emu, same_bank, 16, True) == 2
    assert _degree(emu, [0] * 64, 16, True) == 1  # one address: a broadcast, not a conflict


@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_forward_lds_accesses_conflict_free(emu, head_dim):
    worst = (ctypes.c_int * 4)()
    rc = emu.emu_fwd_lds_conflicts(head_dim, worst)
    assert rc != -2, "k_load / vt_load differ from the lane + immediate split the kernel uses"
    assert rc == 0
    assert dict(zip(("K store", "K load", "V^T store", "V^T load"), worst)) == \
        {"K store": 1, "K load": 1, "V^T store": 1, "V^T load": 1}


HEAD_DIMS = [64, 96, 128, 192, 256]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_forward_head_dims(emu, head_dim, dtype):
    check_dense(emu, 2, 33, 130, 2, 1, head_dim, DTYPES[dtype])


@pytest.mark.parametrize("schedule", [1, 2])
@pytest.mark.parametrize("head_dim", [64, 192])
def test_forward_any_lane_order(emu, head_dim, schedule):
    """One wave at a time, first to last or last to first: a missing barrier between waves (a read of an LDS
    tile another wave has not written yet, or a write over one it still reads) changes the result."""
    check_dense(emu, 1, 200, 150, 1, 1, head_dim, torch.bfloat16, schedule=schedule, causal=True)
    check_dense(emu, 1, 70, 230, 1, 1, head_dim, torch.bfloat16, schedule=schedule, window=(100, 20))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 1), (1, 130), (130, 1), (33, 33), (130, 130), (200, 77), (64, 64),
                                     (77, 200)])
def test_forward_ragged_seqlens(emu, seqlens, causal):
    check_dense(emu, 1, *seqlens, 2, 2, 64, torch.bfloat16, causal=causal)


@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_causal_large_head_dims(emu, head_dim, causal):
    check_dense(emu, 1, 130, 161, 2, 1, head_dim, torch.float16, causal=causal)


@pytest.mark.parametrize("window", [(16, 8), (0, 0), (40, -1), (-1, 5), (3, 3), (200, 0), (2**31 - 1, 3),
                                    (3, 2**31 - 1)])
@pytest.mark.parametrize("seqlens", [(130, 130), (77, 200), (200, 77)])
def test_forward_window(emu, window, seqlens):
    check_dense(emu, 1, *seqlens, 2, 1, 128, torch.bfloat16, window=window)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softcap", [2.0, 30.0])
def test_forward_softcap(emu, softcap, dtype):
    check_dense(emu, 1, 100, 140, 2, 1, 64, DTYPES[dtype], causal=True, softcap=softcap)
    check_dense(emu, 1, 33, 70, 1, 1, 192, DTYPES[dtype], window=(20, 10), softcap=softcap)


@pytest.mark.parametrize("heads", [(4, 2), (3, 1), (4, 4), (6, 3)])
def test_forward_gqa_mqa(emu, heads):
    check_dense(emu, 2, 40, 70, *heads, 96, torch.bfloat16, causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0, 1.5])
def test_forward_scale(emu, scale):
    """Negative scale (the kernel negates q instead), zero (uniform weights), large."""
    check_dense(emu, 1, 50, 90, 2, 1, 64, torch.bfloat16, softmax_scale=scale, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_varlen(emu, head_dim, causal, dtype):
    """Sequences of lengths (q, k): (1, 130), (0, 5), (33, 0) -> out 0 / lse -inf, (130, 33), (140, 140)."""
    lens_q, lens_k = [1, 0, 33, 130, 140], [130, 5, 0, 33, 140]
    cu_q = torch.tensor([0] + lens_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lens_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    dt = DTYPES[dtype]
    q = torch.randn(int(cu_q[-1]), 2, head_dim).to(dt)
    k = torch.randn(int(cu_k[-1]), 1, head_dim).to(dt)
    v = torch.randn(int(cu_k[-1]), 1, head_dim).to(dt)
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse, _ = emu_fwd(emu, q, k, v, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), **options)
    ref_out, ref_lse = reference_fwd(q, k, v, **options)
    assert_fwd_matches(out, lse, ref_out, ref_lse, dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 256])
def test_forward_growing_scores(emu, head_dim, dtype):
    """Scores that climb by ~30 (log2) per K/V tile: the running max moves on every tile, so the lazy rescale of
    O^T (taken only when the max grows by more than 2^8) runs with a finite old max."""
    dt = DTYPES[dtype]
    u = torch.randn(head_dim)
    u = u / u.norm()
    q = (u * 8 + 0.05 * torch.randn(1, 40, 2, head_dim)).to(dt)
    ramp = torch.linspace(0, 14, 300)[None, :, None, None]
    k = (ramp * u + 0.3 * torch.randn(1, 300, 1, head_dim)).to(dt)
    v = torch.randn(1, 300, 1, head_dim).to(dt)
    for causal in (False, True):
        out, lse, _ = emu_fwd(emu, q, k, v, softmax_scale=1.0, causal=causal)
        ref_out, ref_lse = reference_fwd(q, k, v, softmax_scale=1.0, causal=causal)
        assert_fwd_matches(out, lse, ref_out, ref_lse, dt)


def test_forward_strided_views(emu):
    """q, k, v as views into one packed (batch, seqlen, 3, heads, dim) tensor, out into a wider buffer."""
    qkv = torch.randn(2, 70, 3, 2, 128).to(torch.bfloat16)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out, lse, _ = emu_fwd(emu, q, k, v, causal=True)
    ref_out, ref_lse = reference_fwd(q, k, v, causal=True)
    assert_fwd_matches(out, lse, ref_out, ref_lse, torch.bfloat16)


def test_forward_nan_propagates(emu):
    """A NaN key makes exactly the rows that see it NaN, as in the reference."""
    q, k, v = random_qkv(1, 64, 64, 1, 1, 64, torch.bfloat16)
    k[0, 40, 0, 3] = float("nan")
    out, _, _ = emu_fwd(emu, q, k, v, causal=True)
    ref_out, _ = reference_fwd(q, k, v, causal=True)
    assert torch.equal(out.isnan().any(-1), ref_out.isnan().any(-1))
    assert out[0, :40].isfinite().all() and out[0, 40:].isnan().all()


def test_forward_skips_masked_tiles(emu):
    """Causal visits about half the K/V tiles: fewer wave collectives (MFMAs) than the full square."""
    q, k, v = random_qkv(1, 512, 512, 1, 1, 64, torch.bfloat16)
    _, _, full = emu_fwd(emu, q, k, v)
    _, _, causal = emu_fwd(emu, q, k, v, causal=True)
    assert causal["wave_collectives"] < 0.6 * full["wave_collectives"]


def test_harness_catches_out_of_bounds(emu):
    """cu_seqlens_k claiming more keys than k holds: the harness stops the launch at the first bad load."""
    q = torch.randn(10, 1, 64).to(torch.bfloat16)
    k = torch.randn(10, 1, 64).to(torch.bfloat16)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    bad = torch.tensor([0, 40], dtype=torch.int32)
    with pytest.raises(AssertionError, match="outside every registered tensor"):
        emu_fwd(emu, q, k, k, cu_seqlens_q=cu, cu_seqlens_k=bad, max_seqlen_q=10, max_seqlen_k=40)
