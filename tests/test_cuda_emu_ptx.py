"""The CPU model of sm_90a's data movement and tensor cores (csrc/cuda_emu/ptx_{tma,wgmma,smem}.h) against a third
copy of the PTX ISA written here (and in tests/wgmma_isa.py), and against torch.

The harness (csrc/cuda_emu/harness_ptx.cpp) compiles the kernel-side headers csrc/cuda/ptx/*.cuh for the host with
-DFLASHCORE_SM90_EMU, so every kernel below makes the calls the real kernels make (descriptor builders, fragment
helpers); the instructions underneath are the models. What is checked:
  * encode_tensor_map rejects maps the driver documents as invalid, with a message naming the rule;
  * TMA loads of 2D..5D boxes, at the tensor's edges and past them, for every modelled swizzle: the shared-memory
    bytes equal torch slicing (zero-filled outside), swizzled by the ISA's table (absolute-address pattern);
  * TMA stores write exactly the in-bounds elements and read shared memory at the copy, not after the read-wait;
  * TMA reduce-adds (fp32) from several CTAs into one region sum exactly (dyadic values: any order is exact), skip
    out-of-bounds elements, read a staging buffer (st.shared.v2.f32 at the map's swizzle) until the read-wait and no
    longer; a missing fence.proxy.async, or the buffer rewritten before the read-wait, stops the launch;
  * wgmma SS and RS for every N the kernels instantiate, bf16 and f16, with operands brought in by TMA as 64-column
    128B-swizzled panels and described as the kernels describe them (K-major, MN-major with LBO = panel bytes,
    slices advanced inside a swizzled row): every thread's registers, read through the ISA's fragment figure,
    equal a float64 matmul (rounded to fp32 after each K = 16 step, like the accumulator);
  * layout.cuh's fragment tables (acc_row/acc_col, a_row/a_col, stmatrix_sw128_offset) equal the ISA figures;
  * stmatrix + packs as the epilogue uses them; pack rounding (ties to even, f16 subnormals, overflow, NaN);
  * wgmma.wait_group executes only the older groups and reads shared memory at the wait; bad descriptors fail.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from emu_build import compile_objects, compiler, link_library
from wgmma_isa import (CHAIN_PAIRS, PROBE_FORMS, WGMMA_NS, a_coord, acc_coord, chained_matmul, probe_operands,
                       random_16bit, regs_to_matrix)

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_SM90_EMU", "-I", str(CSRC), "-I",
             str(CUDA_HOME / "include")]
SCHEDULES = {"random": 0, "round-robin": 1, "random-priority": 2}  # emu.h Schedule
TILE_ADDR = 2048  # window address of the harness's tiles: dynamic smem (1024 in) + 1024, a swizzle-atom boundary
ELEM = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # TmaElem
_u64p, _u32p, _i32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int32)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    if not (CUDA_HOME / "include" / "cuda.h").exists():
        pytest.skip(f"CUDA headers missing under {CUDA_HOME} (set CUDA_HOME): the model compiles against cuda.h")
    # The engine (engine*.cpp and the fiber layer in emu_common/: plain C++) and this harness ("CUDA" for the host).
    sources = [*sorted((CSRC / "cuda_emu").glob("engine*.cpp")), *sorted((CSRC / "emu_common").glob("*.cpp")),
               CSRC / "cuda_emu" / "harness_ptx.cpp"]
    out = tmp_path_factory.mktemp("cuda_emu_ptx")
    prelude = ["-include", str(CSRC / "cuda_emu" / "prelude.h")]
    jobs = [(s, [*CXX_FLAGS, *(prelude if s.name.startswith("harness") else [])]) for s in sources]
    objects = compile_objects(cxx, jobs, out, "the harness")
    library = link_library(cxx, objects, out / "libcuda_emu_ptx.so", "the harness")
    return ctypes.CDLL(str(library))


def _ptr(t: torch.Tensor | np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data)


def _arr(ctype, values):
    return (ctype * max(len(values), 1))(*values)


def _call(fn, *args) -> None:
    error = ctypes.create_string_buffer(1024)
    rc = fn(*args, error, ctypes.c_int(len(error)))
    assert rc == 0, error.value.decode()


def _call_fails(fn, *args) -> str:
    error = ctypes.create_string_buffer(1024)
    rc = fn(*args, error, ctypes.c_int(len(error)))
    assert rc != 0, "expected the harness to report an error"
    return error.value.decode()


# ---- the ISA, a third time (the fragment figures are in tests/wgmma_isa.py) ------------------------------------------
def swizzle(addr: np.ndarray | int, span: int):
    """PTX ISA "Swizzling Modes": 16-byte chunk c of 128-byte line r moves to chunk c ^ (r mod span/16)."""
    if span == 0:
        return addr
    line, chunk = addr // 128, (addr // 16) % 8
    return addr - chunk * 16 + (chunk ^ (line % (span // 16))) * 16


# ---- tensor maps ---------------------------------------------------------------------------------------------------
def _encode(emu, *, elem=0, rank=2, base=None, dims=(64, 64), strides=(128,), box=(64, 8), swizzle_=128, offset=0):
    base = ctypes.c_void_p(0x10000 if base is None else base)
    error = ctypes.create_string_buffer(512)
    rc = emu.emu_tma_encode(elem, rank, base, _arr(ctypes.c_uint64, dims), _arr(ctypes.c_uint64, strides),
                            _arr(ctypes.c_uint32, box), swizzle_, offset, error, len(error))
    return "" if rc == 0 else error.value.decode()


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), ""),
    (dict(rank=1, dims=(64,), strides=(), box=(64,)), "rank 1"),
    (dict(rank=6, dims=(64,) * 6, strides=(128,) * 5, box=(8,) * 6), "rank 6"),
    (dict(base=0x10008), "16-byte aligned"),
    (dict(dims=(0, 64)), "dim 0"),
    (dict(dims=(64, 2**32 + 1)), "dim 1"),
    (dict(strides=(136,)), "multiple of 16"),
    (dict(strides=(2**40,)), "below 2^40"),
    (dict(box=(64, 0)), "box dim 1"),
    (dict(box=(64, 257)), "box dim 1"),
    (dict(box=(4, 8), swizzle_=0), "multiple of 16 bytes"),
    (dict(box=(128, 8), swizzle_=128), "exceeds the swizzle span"),
    (dict(box=(32, 8), swizzle_=32), "exceeds the swizzle span"),
    (dict(box=(16, 8), swizzle_=32), ""),
    (dict(swizzle_=4), "not modelled"),  # CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B
    (dict(elem=7), "element type"),
    (dict(offset=16), "64-byte aligned"),
])
def test_encode_validates_like_the_driver(emu, kwargs, expected):
    message = _encode(emu, **kwargs)
    assert (message == "") if expected == "" else (expected in message), message


# ---- TMA loads and stores ------------------------------------------------------------------------------------------
def _global(dims, dtype, gen, pad=8):
    """A strided global tensor for a map: innermost dims[0], each row padded so strides are multiples of 16 bytes
    and larger than the data (the map must follow the strides, not assume density)."""
    elem = torch.finfo(dtype).bits // 8
    row = -(-(dims[0] + pad) * elem // 16) * 16 // elem
    strides_el = [1, row]
    for d in dims[1:-1]:
        strides_el.append(strides_el[-1] * (d + 1))  # one spare slab per outer dim
    numel = strides_el[-1] * dims[-1]
    flat = random_16bit((numel,), dtype, gen) if dtype != torch.float32 else torch.randn(numel, generator=gen)
    view = torch.as_strided(flat, tuple(reversed(dims)), tuple(reversed(strides_el)))
    return flat, view, [s * elem for s in strides_el[1:]]


def _expected_box(view: torch.Tensor, coords, box) -> torch.Tensor:
    """The box at `coords` (innermost first), zero outside the tensor: torch slicing."""
    rank = len(box)
    out = torch.zeros(tuple(reversed(box)), dtype=view.dtype)
    src, dst = [], []
    for d in reversed(range(rank)):
        lo, hi = max(0, coords[d]), min(view.shape[rank - 1 - d], coords[d] + box[d])
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - coords[d], hi - coords[d]))
    out[tuple(dst)] = view[tuple(src)]
    return out


def _swizzled_image(dense: np.ndarray, tile_addr: int, span: int) -> np.ndarray:
    """Where the dense box bytes lie in shared memory: byte b at swizzle(tile_addr + b) - tile_addr."""
    offsets = np.arange(dense.size)
    image = np.zeros_like(dense)
    image[swizzle(tile_addr + offsets, span) - tile_addr] = dense
    return image


TMA_CASES = [  # (dims innermost first, box, coords): edges, negative coordinates, boxes hanging off both sides
    ((40, 30), (64, 24), (-8, 20)),
    ((100, 9, 5), (64, 4, 2), (64, 7, -1)),
    ((70, 6, 3, 4), (32, 5, 2, 3), (50, -2, 2, 2)),
    ((33, 3, 4, 2, 3), (16, 2, 3, 2, 2), (24, 2, -1, 1, 2)),
]


@pytest.mark.parametrize("span", [0, 32, 64, 128])
@pytest.mark.parametrize("dims, box, coords", TMA_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tma_load_box_matches_torch_slicing(emu, dims, box, coords, span, dtype):
    gen = torch.Generator().manual_seed(sum(dims) + span)
    elem = torch.finfo(dtype).bits // 8
    box = list(box)
    box[0] = min(box[0], (span or 128) // elem)  # the inner box may not exceed the swizzle span
    flat, view, strides = _global(dims, dtype, gen)
    nbytes = int(np.prod(box)) * elem
    out = np.zeros(nbytes, dtype=np.uint8)
    tile_addr = ctypes.c_uint32()
    for dst_offset in (0, 128):  # 128: legal, not on the swizzle pattern's boundary
        _call(emu.emu_tma_load, ELEM[dtype], len(dims), _ptr(flat), _arr(ctypes.c_uint64, dims),
              _arr(ctypes.c_uint64, strides), _arr(ctypes.c_uint32, box), span, _arr(ctypes.c_int32, coords),
              dst_offset, _ptr(out), nbytes, ctypes.byref(tile_addr), ctypes.c_uint64(7))
        assert tile_addr.value == TILE_ADDR + dst_offset
        expected = _expected_box(view, coords, box).contiguous().view(torch.uint8).numpy().reshape(-1)
        np.testing.assert_array_equal(out, _swizzled_image(expected, tile_addr.value, span))


def test_tma_load_rejects_a_misaligned_destination(emu):
    flat = torch.zeros(64 * 64, dtype=torch.bfloat16)
    out = np.zeros(64 * 8 * 2, dtype=np.uint8)
    message = _call_fails(emu.emu_tma_load, 0, 2, _ptr(flat), _arr(ctypes.c_uint64, (64, 64)),
                          _arr(ctypes.c_uint64, (128,)), _arr(ctypes.c_uint32, (64, 8)), 128,
                          _arr(ctypes.c_int32, (0, 0)), 16, _ptr(out), out.size, ctypes.byref(ctypes.c_uint32()),
                          ctypes.c_uint64(1))
    assert "128-byte aligned" in message


@pytest.mark.parametrize("early_overwrite", [0, 1], ids=["after-read-wait", "before-commit"])
@pytest.mark.parametrize("span", [0, 32, 64, 128])
@pytest.mark.parametrize("dims, box, coords", TMA_CASES)
def test_tma_store_writes_only_in_bounds_elements(emu, dims, box, coords, span, early_overwrite):
    """Only in-bounds elements are written. The store reads shared memory when the copy runs: a tile overwritten
    after bulk_wait_group_read is not stored; one overwritten before any scheduling point is (0x5a5a values).
    wait_group.read does not make the global write visible (only wait_group does)."""
    gen = torch.Generator().manual_seed(3 * sum(dims) + span)
    dtype, elem = torch.bfloat16, 2
    box = list(box)
    box[0] = min(box[0], (span or 128) // elem)
    flat, view, strides = _global(dims, dtype, gen)
    before = flat.clone()
    tile = random_16bit(tuple(reversed(box)), dtype, gen)
    dense = tile.contiguous().view(torch.uint8).numpy().reshape(-1)
    smem = _swizzled_image(dense, TILE_ADDR, span)
    after_read = torch.empty_like(flat)
    _call(emu.emu_tma_store, ELEM[dtype], len(dims), _ptr(flat), _arr(ctypes.c_uint64, dims),
          _arr(ctypes.c_uint64, strides), _arr(ctypes.c_uint32, box), span, _arr(ctypes.c_int32, coords),
          _ptr(smem), smem.size, early_overwrite, _ptr(after_read), ctypes.c_size_t(flat.numel() * elem),
          ctypes.c_uint64(5))
    assert torch.equal(after_read.view(torch.int16), before.view(torch.int16))
    if early_overwrite:
        tile = torch.full_like(tile.view(torch.int16), 0x5a5a).view(dtype)
    expected_flat = before.clone()
    expected_view = torch.as_strided(expected_flat, view.shape, view.stride())
    region = _expected_box(expected_view, coords, box)  # zeros where the box leaves the tensor
    inside = _expected_box(torch.ones(view.shape, dtype=torch.bool), coords, box)
    src, dst = [], []
    for d in reversed(range(len(dims))):
        lo, hi = max(0, coords[d]), min(view.shape[len(dims) - 1 - d], coords[d] + box[d])
        src.append(slice(lo, hi))
        dst.append(slice(lo - coords[d], hi - coords[d]))
    if all(s.start < s.stop for s in src):
        expected_view[tuple(src)] = tile[tuple(dst)]
    assert region.shape == inside.shape
    assert torch.equal(flat.view(torch.int16), expected_flat.view(torch.int16))  # padding and OOB untouched


REDUCE_CASES = [  # (dims innermost first, box, coords): fp32, the inner box 32 floats = one 128-byte swizzled row
    ((64, 128), (32, 64), (32, 0)),                 # inside
    ((40, 50), (32, 64), (16, -10)),                # hangs over the inner edge, the top and the bottom
    ((64, 3, 70), (32, 1, 64), (0, 2, 32)),         # the backward's dQ shape (head_dim, heads, rows): rows clipped
    ((48, 4, 20), (32, 2, 16), (-8, 3, 10)),        # two heads per box, one of them past the end
]


def _dyadic(shape, gen) -> torch.Tensor:
    """fp32 multiples of 1/16 in [-4, 4): sums of a few hundred of them are exact in fp32 in any order."""
    return torch.randint(-64, 64, shape, generator=gen).to(torch.float32) / 16


@pytest.mark.parametrize("span", [0, 128])
@pytest.mark.parametrize("dims, box, coords", REDUCE_CASES)
@pytest.mark.parametrize("ctas", [1, 5])
def test_tma_reduce_add_sums_every_cta_in_bounds(emu, dims, box, coords, span, ctas, schedule):
    """Every CTA's two rounds land (reused staging buffer), the garbage written after the last read-wait does not,
    out-of-bounds box elements and the tensor's padding are untouched."""
    gen = torch.Generator().manual_seed(sum(dims) + span + ctas)
    rounds = 2
    flat, view, strides = _global(dims, torch.float32, gen)
    flat.copy_(_dyadic(flat.shape, gen))
    before = flat.clone()
    tiles = _dyadic((ctas * rounds, *reversed(box)), gen)
    _call(emu.emu_tma_reduce, len(dims), _ptr(flat), _arr(ctypes.c_uint64, dims), _arr(ctypes.c_uint64, strides),
          _arr(ctypes.c_uint32, box), span, _arr(ctypes.c_int32, coords), _ptr(tiles), ctas, rounds, 0,
          ctypes.c_uint64(11))
    expected = before.clone().double()
    expected_view = torch.as_strided(expected, view.shape, view.stride())
    total = tiles.double().sum(0)
    src, dst = [], []
    for d in reversed(range(len(dims))):
        lo, hi = max(0, coords[d]), min(dims[d], coords[d] + box[d])
        src.append(slice(lo, hi))
        dst.append(slice(lo - coords[d], hi - coords[d]))
    expected_view[tuple(src)] += total[tuple(dst)]
    assert torch.equal(flat.double(), expected)  # padding and out-of-bounds untouched, every add exact


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_tma_reduce_in_cta_order(emu, schedule):
    """The deterministic backward's chain: each CTA's thread 0 waits for its turn (ld.acquire.gpu), executes
    fence.proxy.async.global, adds its two rounds and releases after its final wait. Every add lands, none twice."""
    dims, box, coords = REDUCE_CASES[0]
    gen = torch.Generator().manual_seed(5 + SCHEDULES[schedule])
    flat = _dyadic((dims[1] * dims[0],), gen)
    before = flat.clone()
    ctas, rounds = 3, 2
    tiles = _dyadic((ctas * rounds, box[1], box[0]), gen)
    emu.emu_set_schedule(SCHEDULES[schedule])
    try:
        _call(emu.emu_tma_reduce, 2, _ptr(flat), _arr(ctypes.c_uint64, dims), _arr(ctypes.c_uint64, (dims[0] * 4,)),
              _arr(ctypes.c_uint32, box), 128, _arr(ctypes.c_int32, coords), _ptr(tiles), ctas, rounds, 4,
              ctypes.c_uint64(3))
    finally:
        emu.emu_set_schedule(0)
    expected = before.clone().double().view(dims[1], dims[0])
    rows = slice(max(0, coords[1]), min(dims[1], coords[1] + box[1]))
    cols = slice(max(0, coords[0]), min(dims[0], coords[0] + box[0]))
    total = tiles.double().sum(0)
    expected[rows, cols] += total[rows.start - coords[1]:rows.stop - coords[1],
                                  cols.start - coords[0]:cols.stop - coords[0]]
    assert torch.equal(flat.double().view(dims[1], dims[0]), expected)


@pytest.mark.parametrize("bug, expected", [
    (1, "cp.reduce.async.bulk.tensor (add) source (async proxy) accesses shared window address"),
    (2, "while a bulk copy (TMA store / reduce) still reads it"),
    (3, "after its ld.acquire.gpu with no fence.proxy.async.global since"),
])
def test_tma_reduce_ordering_rules(emu, bug, expected):
    """A staging buffer reduced with no fence.proxy.async after its st.shared writes, or rewritten before the
    issuing thread's wait_group.read, stops the launch (the model checks the rule, not its effect); so does a reduce
    issued after an ld.acquire.gpu with no fence.proxy.async.global in between (the deterministic dQ chain)."""
    dims, box, coords = REDUCE_CASES[0]
    flat = torch.zeros(dims[1] * dims[0])
    tiles = torch.ones(2, box[1], box[0])
    message = _call_fails(emu.emu_tma_reduce, 2, _ptr(flat), _arr(ctypes.c_uint64, dims),
                          _arr(ctypes.c_uint64, (dims[0] * 4,)), _arr(ctypes.c_uint32, box), 128,
                          _arr(ctypes.c_int32, coords), _ptr(tiles), 1, 2, bug, ctypes.c_uint64(1))
    assert expected in message, message
    if bug == 1:
        assert "(stmatrix / st.shared) by warp" in message and "no fence.proxy.async" in message, message


# ---- wgmma ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", list(PROBE_FORMS))
@pytest.mark.parametrize("n", WGMMA_NS)
def test_wgmma_ss_every_thread_and_register(emu, n, form, dtype):
    """The probe kernel (csrc/cuda/wgmma_probe_kernel.cuh, also run on the GPU by tests/test_cuda_sm90.py) in every
    form the kernels use: K-major slices over two panels, MN-major pieces inside / across panels, register A."""
    gen = torch.Generator().manual_seed(n * 7 + len(form))
    a, b, a_logical, b_logical, k, b_cols, col0 = probe_operands(n, form, dtype, gen)
    trans_a, trans_b, reg_a = PROBE_FORMS[form]
    regs = torch.zeros(128, n // 2)
    _call(emu.emu_wgmma_ss, n, k, int(dtype == torch.bfloat16), trans_a, trans_b, reg_a, _ptr(a), _ptr(b), b_cols,
          col0, -1, -1, 0, _ptr(regs), ctypes.c_uint64(n))
    torch.testing.assert_close(regs_to_matrix(regs, n), chained_matmul(a_logical, b_logical), rtol=1e-6, atol=1e-5)


@pytest.fixture(params=list(SCHEDULES))
def schedule(emu, request):
    """Runs the test under each of the engine's schedules, then restores the default."""
    emu.emu_set_schedule(SCHEDULES[request.param])
    yield request.param
    emu.emu_set_schedule(0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ns, d", CHAIN_PAIRS)
def test_wgmma_forward_consumer_gemms(emu, ns, d, dtype, schedule):
    """S = Q K^T (SS, K-major, D / 16 slices over 64-column panels), then O = P V with P = 16-bit S packed by
    layout.cuh's a_frag_from_acc (RS) and V read MN-major across panels (LBO = block_n rows * 128 bytes)."""
    gen = torch.Generator().manual_seed(ns + d)
    q, k, v = random_16bit((64, d), dtype, gen), random_16bit((ns, d), dtype, gen), random_16bit((ns, d), dtype, gen)
    s_regs, o_regs = torch.zeros(128, ns // 2), torch.zeros(128, d // 2)
    _call(emu.emu_wgmma_fwd, ns, d, int(dtype == torch.bfloat16), _ptr(q), _ptr(k), _ptr(v), _ptr(s_regs),
          _ptr(o_regs), ctypes.c_uint64(d))
    s = regs_to_matrix(s_regs, ns)
    torch.testing.assert_close(s, chained_matmul(q, k.T), rtol=1e-6, atol=1e-5)
    p = s.to(dtype)  # round to nearest even, as pack_bf16x2 / pack_f16x2
    torch.testing.assert_close(regs_to_matrix(o_regs, d), chained_matmul(p, v), rtol=1e-6, atol=1e-5)


def _canonical_offset(major: str, span: int, lbo: int, sbo: int, mn: int, k: int) -> int:
    """PTX ISA "Canonical Layouts" (CuTe, elements; T = 8 16-bit values = 16 bytes), as byte offsets:
    K-major  none ((8,m),(T,2k)):((1T,SBO),(1,LBO))     swizzled ((8,m),(T,2k)):((S/16 T,SBO),(1,T))
    MN-major none ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))  swizzled ((T,S/16,m),(8,k)):((1,T,LBO),(S/16 T,SBO))"""
    if major == "K":
        if span == 0:
            return (mn % 8) * 16 + (mn // 8) * sbo + (k % 8) * 2 + (k // 8) * lbo
        return (mn % 8) * span + (mn // 8) * sbo + k * 2
    if span == 0:
        return (mn % 8) * 2 + (mn // 8) * sbo + (k % 8) * 16 + (k // 8) * lbo
    per_row = span // 2
    return (mn % per_row) * 2 + (mn // per_row) * lbo + (k % 8) * span + (k // 8) * sbo


def _descriptor(addr: int, lbo: int, sbo: int, span: int) -> int:
    """PTX ISA "Matrix Descriptor Format": bits 0-13 addr >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 62-63 swizzle."""
    mode = {0: 0, 128: 1, 64: 2, 32: 3}[span]
    return (addr >> 4) | (lbo >> 4) << 16 | (sbo >> 4) << 32 | mode << 62


def _strides(major: str, span: int, rows: int) -> tuple[int, int]:
    """An (LBO, SBO) that packs a rows x 16 operand densely in its canonical layout."""
    if major == "K":
        return (128, 256) if span == 0 else (16, 8 * span)          # LBO: the second core matrix along K
    if span == 0:
        return (rows // 8) * 128, 128                                 # LBO: K groups; SBO: 8-value MN groups
    return 2 * 8 * span, 8 * span                                     # LBO: next S/2 MN values; SBO: next 8 K rows


@pytest.mark.parametrize("span", [0, 32, 64, 128])
@pytest.mark.parametrize("majors", ["KK", "KM", "MK", "MM"])
@pytest.mark.parametrize("n", [32, 64])
def test_wgmma_every_swizzle_mode_and_major(emu, span, majors, n):
    """One wgmma on an image built here from the ISA's canonical layouts: the modes the kernels do not use
    (none, 32B, 64B, and the (MN, K) pair) are modelled, not just rejected."""
    gen = torch.Generator().manual_seed(span + n + ord(majors[0]) + 2 * ord(majors[1]))
    a = random_16bit((64, 16), torch.bfloat16, gen)  # logical A (M x K)
    b = random_16bit((n, 16), torch.bfloat16, gen)   # B^T
    image = np.zeros(16384, np.uint8)
    descs = []
    for operand, major, base in ((a, majors[0], 0), (b, majors[1], 8192)):
        major = "K" if major == "K" else "MN"
        lbo, sbo = _strides(major, span, operand.shape[0])
        bits = operand.view(torch.int16).numpy().astype(np.uint16)
        for mn in range(operand.shape[0]):
            for k in range(16):
                addr = swizzle(TILE_ADDR + base + _canonical_offset(major, span, lbo, sbo, mn, k), span)
                image[addr - TILE_ADDR:addr - TILE_ADDR + 2] = np.frombuffer(bits[mn, k].tobytes(), np.uint8)
        descs.append(_descriptor(TILE_ADDR + base, lbo, sbo, span))
    regs = torch.zeros(128, n // 2)
    _call(emu.emu_wgmma_raw, n, 1, int(majors[0] == "M"), int(majors[1] == "M"), _ptr(image), image.size,
          ctypes.c_uint64(descs[0]), ctypes.c_uint64(descs[1]), _ptr(regs), ctypes.c_uint64(span))
    torch.testing.assert_close(regs_to_matrix(regs, n), chained_matmul(a, b.T), rtol=1e-6, atol=1e-5)


def test_wgmma_wait_group_order_late_shared_reads_and_scales(emu, schedule):
    gen = torch.Generator().manual_seed(11)
    a, b = random_16bit((64, 64), torch.bfloat16, gen), random_16bit((64, 64), torch.bfloat16, gen)
    out = torch.zeros(6, 128, 32)
    pending = (ctypes.c_int * 1)()
    _call(emu.emu_wgmma_semantics, _ptr(a), _ptr(b), _ptr(out), pending, ctypes.c_uint64(3))
    ab = chained_matmul(a[:, :16], b[:, :16].T)
    torch.testing.assert_close(regs_to_matrix(out[0], 64), ab, rtol=1e-6, atol=1e-5)   # wait<1>: the older group ran
    assert torch.all(out[1] == 7.0)                                                      # ... the newer did not
    assert pending[0] == 1
    torch.testing.assert_close(regs_to_matrix(out[2], 64), chained_matmul(a[:, :16], b[:, :16].T,
                                                                          torch.full((64, 64), 7.0)))
    assert torch.all(out[3] == 0.0)  # A zeroed between commit and wait: the model reads shared memory at the wait
    torch.testing.assert_close(regs_to_matrix(out[4], 64), -ab, rtol=0, atol=0)  # imm-scale-a = -1
    torch.testing.assert_close(regs_to_matrix(out[5], 64), chained_matmul(a[:, :16], b[:, :16].T,
                                                                          torch.full((64, 64), 7.0)))  # (-A)(-B)


@pytest.mark.parametrize("which, expected", [
    (0, ""), (1, "base offset"), (2, "wrap"), (3, "outside its fields"), (4, "different"), (5, "wrap"),
    (6, "not encoded"), (7, "changed its accumulator registers"), (8, "line 4 of its 1024-byte swizzle pattern"),
])
def test_bad_operands_fail_the_launch(emu, which, expected):
    message = _call_fails(emu.emu_wgmma_bad, which, ctypes.c_uint64(1))
    assert expected in message, message


@pytest.mark.parametrize("case, expected", [
    (0, "wgmma.mma_async operand A (async proxy) accesses shared window address"),
    (2, "cp.async.bulk.tensor (store) source (async proxy)"),
    (4, "wrote its accumulator registers since they were last used by a wgmma with no wgmma.fence"),
    (6, "changed its A-fragment registers between wgmma.mma_async and the wgmma.wait_group"),
    (8, "issues its first wgmma with no wgmma.fence before it"),
])
def test_ordering_rules(emu, case, expected):
    """Each rule the model cannot see by its effect (one OS thread reorders nothing): the correct kernel passes,
    its twin with the fence missing (or the registers rewritten too early) fails with the rule's message."""
    _call(emu.emu_fence_case, case, ctypes.c_uint64(1))
    message = _call_fails(emu.emu_fence_case, case + 1, ctypes.c_uint64(1))
    assert expected in message, message
    if case < 4:
        assert "by warp" in message and "lanes" in message and "no fence.proxy.async" in message, message


# ---- fragments, stmatrix, packs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", WGMMA_NS)
def test_layout_tables_match_the_isa_figures(emu, n):
    acc_row, acc_col = np.zeros(128 * n // 2, np.int32), np.zeros(128 * n // 2, np.int32)
    a_row, a_col = np.zeros(128 * 8, np.int32), np.zeros(128 * 8, np.int32)
    stm = np.zeros(32 * 4, np.uint32)
    emu.emu_layout(n, _ptr(acc_row), _ptr(acc_col), _ptr(a_row), _ptr(a_col), _ptr(stm))
    for t in range(128):
        for i in range(n // 2):
            assert (acc_row[t * n // 2 + i], acc_col[t * n // 2 + i]) == acc_coord(t, i), (t, i)
        for r in range(4):
            for h in range(2):
                assert (a_row[(t * 4 + r) * 2 + h], a_col[(t * 4 + r) * 2 + h]) == a_coord(t, r, h), (t, r, h)
    # stmatrix: lane l gives row l % 8 of matrix l / 8; matrices (rows 0-7 | 8-15) x (chunk c | c + 1), as the
    # accumulator registers {0,1}, {2,3}, {4,5}, {6,7} of a 16-column block lie (acc_coord).
    for lane in range(32):
        for c in range(4):
            row, chunk = lane % 8 + 8 * ((lane // 8) % 2), 2 * c + lane // 16
            assert stm[lane * 4 + c] == swizzle(row * 128 + chunk * 16, 128), (lane, c)


def test_descriptor_builders_encode_the_isa_fields(emu):
    """wgmma.cuh's kmajor_sw128_desc / mnmajor_sw128_desc and smem.cuh's swizzle128_offset against the ISA: K-major
    128B: LBO "not used, assumed to be 1" (16 bytes), SBO = 8 rows x 128 B; MN-major 128B: LBO = the next 64 MN
    values (the panel), SBO = the next 8 K rows (1024 B); swizzle: chunk c of line r at c ^ (r % 8)."""
    kmajor, mnmajor = ctypes.c_uint64(), ctypes.c_uint64()
    offsets = np.zeros(16 * 8, np.uint32)
    for addr, panel in ((TILE_ADDR, 8192), (TILE_ADDR + 96, 16384), (0x3fc00, 64 * 128)):
        emu.emu_descriptors(addr, panel, ctypes.byref(kmajor), ctypes.byref(mnmajor), _ptr(offsets))
        assert kmajor.value == _descriptor(addr, 16, 1024, 128)
        assert mnmajor.value == _descriptor(addr, panel, 1024, 128)
    for row in range(16):
        for chunk in range(8):
            assert offsets[row * 8 + chunk] == swizzle(row * 128 + chunk * 16, 128)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stmatrix_epilogue_tile(emu, dtype, schedule):
    gen = torch.Generator().manual_seed(5)
    regs = torch.randn(128, 32, generator=gen)
    out = np.zeros(64 * 128, np.uint8)
    tile_addr = ctypes.c_uint32()
    _call(emu.emu_stmatrix, _ptr(regs), int(dtype == torch.bfloat16), _ptr(out), ctypes.byref(tile_addr),
          ctypes.c_uint64(2))
    dense = out[swizzle(tile_addr.value + np.arange(out.size), 128) - tile_addr.value]
    tile = torch.from_numpy(dense.copy()).view(dtype).reshape(64, 64)
    torch.testing.assert_close(tile, regs_to_matrix(regs, 64).to(dtype), rtol=0, atol=0)


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.view(torch.int16).numpy().astype(np.uint16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pack_rounds_to_nearest_even(emu, dtype):
    gen = torch.Generator().manual_seed(9)
    ties_bf16 = (torch.arange(64, dtype=torch.int32) * 0x10000 + 0x3f808000).view(torch.float32)  # exact halves
    f16_specials = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 2**-24, 2**-25,
                                 3 * 2**-25, 2**-26, 2**-14 - 2**-25, 6.1e-5, -0.0, 1e-30])
    values = torch.cat([torch.randn(2000, generator=gen) * 10, torch.randn(500, generator=gen) * 1e-5, ties_bf16,
                        f16_specials, torch.tensor([float("inf"), -float("inf"), 3.4e38, -3.4e38, 0.0])])
    lo, hi = values.contiguous(), values.flip(0).contiguous()
    out = np.zeros(values.numel(), np.uint32)
    emu.emu_pack(_ptr(lo), _ptr(hi), values.numel(), int(dtype == torch.bfloat16), _ptr(out))
    np.testing.assert_array_equal((out & 0xFFFF).astype(np.uint16), _bits(lo.to(dtype)))
    np.testing.assert_array_equal((out >> 16).astype(np.uint16), _bits(hi.to(dtype)))
    nan, nan_flipped = torch.tensor([float("nan"), -float("nan")]), torch.tensor([-float("nan"), float("nan")])
    emu.emu_pack(_ptr(nan), _ptr(nan_flipped), 2, int(dtype == torch.bfloat16), _ptr(out))
    halves = torch.from_numpy(np.stack([out[:2] & 0xFFFF, out[:2] >> 16]).astype(np.uint16).view(np.int16))
    assert torch.isnan(halves.view(dtype)).all()


def test_wgmma_diagnose_finds_the_kernels_descriptor(emu):
    """tests/wgmma_diagnose.py (run on a GPU when a probe fails) on the CPU model: the kernels' MN-major descriptor
    passes, its overrides reach the kernel (the same values as an override pass too), a swapped LBO / SBO fails
    (SBO steps along K in every case), and the model rejects non-zero base offsets."""
    from wgmma_diagnose import candidates, diagnose

    def probe(a, b, n, col0, trans_a, trans_b, reg_a, lbo, sbo, base):
        k = a.shape[0] if trans_a else a.shape[1]
        regs = torch.zeros(128, n // 2)
        _call(emu.emu_wgmma_ss, n, k, int(a.dtype == torch.bfloat16), int(trans_a), int(trans_b), int(reg_a),
              _ptr(a), _ptr(b), b.shape[1] if trans_b else 0, col0, lbo, sbo, base, _ptr(regs), ctypes.c_uint64(n))
        return regs

    panel = 64 * 128  # KMN probes use K = 64 rows per panel
    assert candidates(panel)[0] == (panel, 1024, 0) and (1024, panel, 0) in candidates(panel)
    rows = diagnose(probe, [(128, "KMN"), (32, "KMN")], try_all=True, limit=2 * 8)  # the first two strides
    assert [r["kernels"] for r in rows] == ["ok", "ok"], rows
    assert [r["passing"] for r in rows] == [[(panel, 1024, 0)]] * 2, rows
