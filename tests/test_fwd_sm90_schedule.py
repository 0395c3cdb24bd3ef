"""CPU checks of the sm_90a forward's index math, no GPU needed.

* tests/cpp/fwd_sm90_schedule_check.cpp (g++, against csrc/cuda/fwd/schedule.h): for every (seqlen_q, seqlen_k,
  window_left, window_right) with lengths up to 24 (windows -1, 0, 1, 2, 5, 9, 40; causal is window_right = 0) and
  four small block shapes, plus kernel-sized blocks on the GPU tests' lengths, against brute force: the key tiles a
  query block visits are exactly those holding a key some valid row sees (no visible key missed, no fully masked
  tile visited); a tile is left unmasked exactly when every (valid row, key) in it is visible, also per consumer
  part (2 or 3 of them); the persistent order schedules every work tile once, head groups contiguous,
  longest-first inside a group. And the dynamic scheduler's hand-off (tile_handoff.h, shared with the backward): a
  model of each CTA's producer and 8 or 12 consumer warps (2 or 3 consumer warpgroups) with the kernel's barriers
  (tile-index ring, Q buffer, K/V rings, the consumers' ping-pong named barriers, the epilogue's named barrier),
  stepped through random interleavings of 1-5 CTAs claiming from one counter, also as built with
  -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (two Q buffers, the next item's first S in the last one's tail turn): every
  tile handed out once and run by all consumer warps of one CTA, all roles of a CTA see one sequence ending in the
  sentinel, equal ping-pong turns opened in consumer order with no named barrier left pending, no deadlock, and
  every mbarrier parity wait means the phase it names (no role laps another).
* tests/cpp/fwd_sm90_layout_check.cu (nvcc for sm_90a, run on the host): wgmma accumulator / register-A fragment
  formulas against the PTX ISA figures re-encoded, the masking shortcut, the S -> P packing order, the epilogue's
  stmatrix addresses against the 128B-swizzled panel a TMA store reads, descriptor fields, shared-memory budgets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_ptx_probe import find_nvcc

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "tests" / "cpp"


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc.stdout


def test_schedule_against_brute_force(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    exe = tmp_path / "schedule_check"
    run([cxx, "-std=c++20", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}", str(CPP / "fwd_sm90_schedule_check.cpp"),
         "-o", str(exe)])
    out = run([str(exe)])
    assert ", 0 failures" in out, out
    assert int(out.split("checked ")[1].split()[0]) > 100_000, out  # the sweep really ran
    assert int(out.split("hand-off model: ")[1].split()[0]) > 5_000, out  # and the interleavings


def _layout_check(directory: Path, flags: list[str]) -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME): the sm_90a headers cannot be compiled here")
    exe = directory / "layout_check"
    run([nvcc, "-std=c++20", "-O1", "-gencode=arch=compute_90a,code=sm_90a", *flags, f"-I{ROOT / 'csrc'}",
         str(CPP / "fwd_sm90_layout_check.cu"), "-o", str(exe)])
    return run([str(exe)])


@pytest.fixture(scope="module")
def layout_check_output(tmp_path_factory) -> str:
    return _layout_check(tmp_path_factory.mktemp("fwd_sm90"), [])


def test_layout_under_the_d128_n176_switch(tmp_path):
    """-DFLASHCORE_FWD_SM90_D128_N176 (fwd/traits.cuh): D=128 with 176-key tiles passes the same checks (the 176-wide
    accumulator and P fragments, 1024-byte aligned panels of 176 rows, the V descriptor's LBO, shared memory within
    the limit) and stages its output in Q's buffer, the separate one no longer fitting."""
    out = _layout_check(tmp_path, ["-DFLASHCORE_FWD_SM90_D128_N176"])
    assert ", 0 failures" in out, out
    assert "D=128 block_m=128 block_n=176 stages=2 " in out and "regs O=64 S=88 P=44" in out, out
    assert "D=128 separate output buffer: 0" in out, out
    assert "D=64 block_m=192 block_n=128 " in out, out  # the other head dims keep their rows


def test_layout_under_the_item_pipeline_switch(tmp_path):
    """-DFLASHCORE_FWD_SM90_ITEM_PIPELINE (fwd/traits.cuh kItemPipeline): two Q buffers next to the output buffer
    where all three fit (D = 64, 96, 128), within the shared-memory limit and 1024-byte aligned; D = 192 / 256 (no
    output buffer) keep one."""
    out = _layout_check(tmp_path, ["-DFLASHCORE_FWD_SM90_ITEM_PIPELINE"])
    assert ", 0 failures" in out, out
    for head_dim, buffers in [(64, 2), (96, 2), (128, 2), (192, 1), (256, 1)]:
        assert f"D={head_dim} Q buffers: {buffers}" in out, out


def test_fragments_and_epilogue_addresses(layout_check_output):
    out = layout_check_output
    assert ", 0 failures" in out, out
    for head_dim in (64, 96, 128, 192, 256):
        assert f"D={head_dim} " in out and f"D={head_dim} Q buffers: 1" in out, out


TILE_ROW = re.compile(r"^\s*X\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)\s*\\?\s*$")


def test_tile_table_is_what_the_kernel_compiles(layout_check_output):
    """csrc/tiles/sm90_fwd.h is parsed as text by the shape advisor: its rows must be exactly the constants the
    compiled kernel traits hold (and cover the five head dims)."""
    text = (ROOT / "csrc" / "tiles" / "sm90_fwd.h").read_text()
    assert "// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm" in text
    rows = [tuple(map(int, m.groups())) for line in text.splitlines() if (m := TILE_ROW.match(line))]
    assert [r[0] for r in rows] == [64, 96, 128, 192, 256], rows
    for head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm in rows:
        assert f"D={head_dim} block_m={block_m} block_n={block_n} stages={stages} " in layout_check_output
        # static_asserts in fwd/traits.cuh: 1 producer + 2 or 3 consumers of 64 rows each, one CTA per SM
        assert warpgroups in (3, 4) and block_m == 64 * (warpgroups - 1) and ctas_per_sm == 1, head_dim
        assert f"D={head_dim} consumers={warpgroups - 1} threads={128 * warpgroups} " in layout_check_output
