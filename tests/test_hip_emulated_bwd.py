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
- lanes run one wave at a time in both orders, so a missing barrier changes the result;
- every LDS access pattern of the kernel, from its own address functions, against the CDNA3 bank model
  (csrc/hip/lds.h, harness_lds.cpp): operand reads and transposed stores conflict-free.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest
import torch
from emu_build import compile_objects, compiler, link_library
from emu_checks import assert_grads_match, forward_for, reference_bwd

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = [("emu_common/fiber.cpp", []), ("hip_emu/emu.cpp", []), ("hip_emu/harness_lds.cpp", []),
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Bf16"]),
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Fp16"]),
           # the negative tests' kernels: 1 without the barrier before dQ reads dS, 2 without the ticket wait
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Bf16", "-DFLASHCORE_BWD_FAULT=1"]),
           ("hip_emu/harness_bwd.cpp", ["-DFLASHCORE_EMU_ELEMENT=Bf16", "-DFLASHCORE_BWD_FAULT=2"])]
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_HIP_EMU", "-Wno-psabi", f"-I{CSRC}"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# max |grad - ref| / max |ref|: the kernel rounds P and dS to 16 bits before their MFMAs, as every
# FlashAttention backward does


@pytest.fixture(scope="module")
def emu():
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    import tempfile
    out = Path(tempfile.mkdtemp(prefix="hip_emu_bwd_"))
    start = time.monotonic()
    jobs = [(CSRC / source, [*CXX_FLAGS, *flags, "-x", "c++"]) for source, flags in SOURCES]
    objects = compile_objects(cxx, jobs, out, "the CPU harness")
    library = link_library(cxx, objects, out / "libflashcore_hip_emu_bwd.so", "the CPU harness")
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
            os_threads=2, schedule=0, reverse_blocks=False, fault=0):
    """The backward kernels in the harness; returns (dq, dk, dv, stats), stats["workspace"] being the workspace
    after the run (its fp32 dQ accumulator first). dq/dk/dv start as NaN. fault: a negative test's kernel."""
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
    if fault:
        fn = getattr(emu, f"emu_bwd_fault{fault}_Bf16")
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
    workspace = torch.zeros(max(workspace_bytes.value, 1), dtype=torch.uint8)
    call(workspace)
    return (*grads, dict(zip(("blocks", "fiber_switches", "wave_collectives", "barriers"), stats),
                         workspace=workspace))


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 1), (1, 17), (17, 1), (17, 17), (1, 300), (300, 1), (130, 130), (200, 77),
                                     (77, 200)])
def test_backward_ragged_seqlens(emu, seqlens, causal):
    check_dense(emu, 1, *seqlens, 2, 1, 64, torch.bfloat16, causal=causal)


@pytest.mark.parametrize("head_dim", [128, 256])
def test_backward_no_dlse(emu, head_dim):
    check_dense(emu, 2, 70, 90, 2, 2, head_dim, torch.float16, with_dlse=False)


@pytest.mark.parametrize("window", [(16, 8), (0, 0), (40, -1), (-1, 5), (200, 0), (2**31 - 1, 3)])
@pytest.mark.parametrize("seqlens", [(130, 130), (77, 200), (200, 77)])
def test_backward_window(emu, window, seqlens):
    check_dense(emu, 1, *seqlens, 1, 1, 128, torch.bfloat16, window=window)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softcap", [2.0, 30.0])
def test_backward_softcap(emu, softcap, dtype):
    check_dense(emu, 1, 100, 140, 2, 1, 64, DTYPES[dtype], causal=True, softcap=softcap)
    check_dense(emu, 1, 33, 70, 1, 1, 192, DTYPES[dtype], window=(20, 10), softcap=softcap)


@pytest.mark.parametrize("heads", [(4, 2), (3, 1), (4, 4), (6, 3)])
def test_backward_gqa_mqa(emu, heads):
    """dK/dV of a K/V head sum over its group's query heads (the workgroup walks them itself)."""
    check_dense(emu, 2, 40, 150, *heads, 96, torch.bfloat16, causal=True)


@pytest.mark.parametrize("scale", [-0.2, 0.0, 1.5])
def test_backward_scale(emu, scale):
    """Negative scale (q negated in the kernel, dK scaled by |scale|, dQ by scale), zero, large."""
    check_dense(emu, 1, 50, 90, 2, 1, 64, torch.bfloat16, softmax_scale=scale, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_varlen(emu, head_dim, causal, dtype):
    """Sequences of lengths (q, k): (1, 130), (0, 5) -> dk = dv = 0, (33, 0) -> dq = 0, (130, 33), (17, 17);
    deterministic for D = 64 (its tickets are per sequence, head and Q tile)."""
    lens_q, lens_k = [1, 0, 33, 130, 17], [130, 5, 0, 33, 17]
    cu_q = torch.tensor([0] + lens_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lens_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    dt = DTYPES[dtype]
    q = torch.randn(int(cu_q[-1]), 2, head_dim).to(dt)
    k = torch.randn(int(cu_k[-1]), 1, head_dim).to(dt)
    v = torch.randn(int(cu_k[-1]), 1, head_dim).to(dt)
    dout = torch.randn(q.shape).to(dt)
    options = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse = forward_for(q, k, v, **options)
    dlse = torch.randn(lse.shape)
    *got, _ = emu_bwd(emu, q, k, v, out, lse, dout, dlse, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                      deterministic=head_dim == 64, **options)
    want = reference_bwd(q, k, v, out, lse, dout, dlse, **options)
    assert_grads_match(got, want, dt)
    assert torch.equal(got[1][130:135], torch.zeros_like(got[1][130:135]))  # keys of the query-less sequence
    assert torch.equal(got[0][1:34], torch.zeros_like(got[0][1:34]))        # queries of the key-less sequence


def test_backward_unseen_keys_and_empty_rows(emu):
    """A window that leaves keys 0..274 unseen: their dK = dV = 0 exactly. seqlen_q > seqlen_k with causal: the
    first rows see no key (lse = -inf), and with a nonzero dlse they still contribute nothing (dQ = 0)."""
    got, _ = check_dense(emu, 1, 20, 300, 1, 1, 64, torch.bfloat16, window=(5, 0))
    assert torch.equal(got[1][0, :275], torch.zeros_like(got[1][0, :275]))
    assert torch.equal(got[2][0, :275], torch.zeros_like(got[2][0, :275]))
    assert got[1][0, 275:].abs().sum() > 0
    got, _ = check_dense(emu, 1, 150, 40, 1, 1, 64, torch.bfloat16, causal=True)
    assert torch.equal(got[0][0, :110], torch.zeros_like(got[0][0, :110]))



def _determinism_case(dtype=torch.bfloat16, head_dim=64):
    """5 K/V blocks x 2 query heads sharing a K/V head, every Q tile touched by several blocks."""
    q = torch.randn(1, 300, 2, head_dim).to(dtype)
    k = torch.randn(1, 600, 1, head_dim).to(dtype)
    v = torch.randn(1, 600, 1, head_dim).to(dtype)
    dout = torch.randn(q.shape).to(dtype)
    out, lse = forward_for(q, k, v, window=(300, 100))
    return (q, k, v, out, lse, dout, torch.randn(lse.shape)), dict(window=(300, 100))


BLOCKS = 5  # K/V blocks of _determinism_case: reversed dispatch needs a thread per block (they wait on each other)


def test_deterministic_bit_identical(emu):
    """deterministic=True: dq, dk, dv and the fp32 dQ accumulator bit-identical across OS thread counts, lane
    schedules and block dispatch order (last block first). The atomic mode on the same inputs is as accurate,
    and its accumulator follows the dispatch order: first-to-last and last-to-first differ in the last bits."""
    args, options = _determinism_case()
    runs = [dict(os_threads=1), dict(os_threads=3, schedule=1), dict(os_threads=2, schedule=2),
            dict(os_threads=BLOCKS, reverse_blocks=True)]
    first = None
    for run in runs:
        *grads, stats = emu_bwd(emu, *args, deterministic=True, **options, **run)
        result = (*grads, stats["workspace"])
        if first is None:
            first = result
            assert_grads_match(grads, reference_bwd(*args[:5], args[5], args[6], **options), torch.bfloat16)
        for name, a, b in zip(("dq", "dk", "dv", "workspace"), first, result):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{name} differs under {run}"
    *_, forward_order = emu_bwd(emu, *args, os_threads=1, **options)
    *_, reverse_order = emu_bwd(emu, *args, os_threads=1, reverse_blocks=True, **options)
    assert not torch.equal(forward_order["workspace"], reverse_order["workspace"]), \
        "the atomic mode's fp32 sums did not depend on the block order: the test cannot tell the modes apart"


def test_harness_catches_missing_ticket_wait(emu):
    """The deterministic kernel without its ticket wait: the dQ sums follow the dispatch order again."""
    args, options = _determinism_case()
    *_, a = emu_bwd(emu, *args, deterministic=True, os_threads=1, fault=2, **options)
    *_, b = emu_bwd(emu, *args, deterministic=True, os_threads=1, reverse_blocks=True, fault=2, **options)
    assert not torch.equal(a["workspace"], b["workspace"])


@pytest.mark.parametrize("schedule", [1, 2])
def test_backward_any_lane_order(emu, schedule):
    """One wave at a time, first to last or last to first: a missing barrier between waves changes the result."""
    check_dense(emu, 1, 200, 150, 1, 1, 64, torch.bfloat16, schedule=schedule, causal=True)
    check_dense(emu, 1, 70, 230, 2, 1, 192, torch.bfloat16, schedule=schedule, window=(100, 20))


def test_harness_catches_missing_barrier(emu):
    """The kernel without the barrier between the dS writes and the dQ MFMAs that read other waves' dS: with
    one wave at a time it reads Q/dO (or poison) instead and dq is wrong; dk, dv are untouched."""
    q = torch.randn(1, 64, 1, 64).to(torch.bfloat16)
    k = torch.randn(1, 128, 1, 64).to(torch.bfloat16)
    v = torch.randn(1, 128, 1, 64).to(torch.bfloat16)
    dout = torch.randn(q.shape).to(torch.bfloat16)
    out, lse = forward_for(q, k, v)
    want = reference_bwd(q, k, v, out, lse, dout, None)
    dq, dk, dv, _ = emu_bwd(emu, q, k, v, out, lse, dout, schedule=1, fault=1)
    assert_grads_match((dk, dv), want[1:], torch.bfloat16, names=("dk", "dv"))
    with pytest.raises(AssertionError, match="dq"):
        assert_grads_match((dq,), want[:1], torch.bfloat16)
    dq, _, _, _ = emu_bwd(emu, q, k, v, out, lse, dout, schedule=1)  # the real kernel, same lane order
    assert_grads_match((dq,), want[:1], torch.bfloat16)


# Worst bank-conflict degree per LDS access class (csrc/hip/lds.h's model). The MFMA operand reads and the
# transposed tile stores are conflict-free; the row-major copy of a staged unit (4 rows x 8 dims: 8 lanes write
# 8 row quads of one chunk column) is 4-way.
LDS_EXPECTED = {"Q/dO read": 1, "Q^T/dO^T read": 1, "dS read": 1, "row-major store": 4, "transposed store": 1,
                "dS write": 1}


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_backward_lds_banks(emu, head_dim):
    offsets = (ctypes.c_int64 * 64)()
    worst = {}
    for kind, name in enumerate(LDS_EXPECTED):
        step = 0
        while (width := emu.emu_bwd_lds_offsets(head_dim, kind, step, offsets)) > 0:
            degree = emu.emu_lds_conflict_degree(offsets, width, int(kind < 3))
            worst[name] = max(worst.get(name, 1), degree)
            step += 1
        assert step > 0 and width == 0, f"{name}: no accesses"
    assert worst == LDS_EXPECTED
