"""The gfx942 kernels, executed lane by lane on the CPU (csrc/hip_emu), against independent references.

The harness compiles the same kernel source as the HIP build, for the host (g++ -std=c++20 -O2), and runs every
work-item as a fiber; MFMA and the other wave-level instructions are 64-lane rendezvous that reproduce the
hardware's lane layouts (csrc/hip_emu/emu.h). It is built once per session into the pytest temp dir and loaded
with ctypes. What is checked here:
- each MFMA, for every lane and register, against a float64 matrix product laid out by this file's own copy of
  the CDNA3 operand tables (so the harness, csrc/hip/mfma.h and this file must agree three ways);
- the MFMA probe kernel (row-major in, row-major out) against A @ B + C.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
HARNESS_SOURCES = ["hip_emu/emu.cpp", "hip_emu/harness_mfma.cpp"]
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_HIP_EMU", "-Wno-psabi", f"-I{CSRC}"]


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The harness library, built once per session (one object file per source, compiled in parallel)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU harness")
    out = tmp_path_factory.mktemp("hip_emu")
    start = time.monotonic()

    def compile_one(source: str) -> Path:
        obj = out / (Path(source).stem + ".o")
        subprocess.run([cxx, *CXX_FLAGS, "-x", "c++", "-c", str(CSRC / source), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        return obj

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            objects = list(pool.map(compile_one, HARNESS_SOURCES))
        library = out / "libflashcore_hip_emu.so"
        subprocess.run([cxx, "-shared", "-pthread", *map(str, objects), "-o", str(library)], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the CPU harness failed:\n{' '.join(exc.cmd)}\n{exc.stderr}")
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
