"""The sm_90a backward's tile plan (csrc/cuda/bwd_sm90_plan.h) checked on the CPU, no GPU or CUDA needed.

tests/cpp/bwd_sm90_plan_check.cpp is compiled with g++ against the same header the kernel includes and compares
its closed forms with brute force on small shapes (every seqlen pair up to 130 x every window side x small and
real tile shapes), and simulates the persistent schedule with the deterministic mode's semaphores:
  * every (query, key) pair that contributes lies in a visited tile, and no visited tile is fully masked;
  * key_block_range is the exact converse of query_tile_range (the deterministic ranks rely on it);
  * a tile the plan leaves unmasked is fully visible; the kernel's int32 per-tile mask equals visible();
  * every work item is run exactly once for every grid size; the simulated grid never deadlocks, and each query
    tile's dQ adds arrive in increasing key-block order (a fixed total order: bit-identical sums).
  * the kernel's roles (producer + 8 consumer warps per CTA) with their barriers (item-index ring, K/V pair, stage
    ring, the consumers' named barriers, the zeroing ones of tiles that overhang a sequence's end included, the
    deterministic semaphores in both forms: ordered loads / stores behind one release per block, and by TMA with
    each consumer's release deferred to its next tile), stepped through random interleavings under the dynamic
    schedule (claims from a shared counter, csrc/cuda/tile_handoff.h) and the static one: no deadlock, every item handed out once and run by all consumer warps of one CTA, every role
    of a CTA walks one increasing sequence ending in the sentinel, every parity wait means the phase it names,
    each query tile's dQ adds come from exactly its contributing blocks in rank order, and every turn is passed on.
A second test breaks the header (or the model's mirror of the kernel) on purpose, one mutation per check family,
and expects the program to fail, so that the checks are known to bite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "csrc" / "cuda" / "bwd_sm90_plan.h"
HANDOFF = ROOT / "csrc" / "cuda" / "tile_handoff.h"  # included by the plan: the dynamic schedule's claims
CHECK = ROOT / "tests" / "cpp" / "bwd_sm90_plan_check.cpp"
TABLE = ROOT / "csrc" / "tiles" / "sm90_bwd.h"
CXX_FLAGS = ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror"]


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the plan check")
    return cxx


def _build_and_run(include_dir: Path, tmp_path: Path, check: Path = CHECK) -> subprocess.CompletedProcess:
    exe = tmp_path / "plan_check"
    build = subprocess.run([_compiler(), *CXX_FLAGS, f"-I{include_dir}", str(check), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)


def test_plan_matches_brute_force(tmp_path):
    run = _build_and_run(ROOT / "csrc", tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert run.stdout.startswith("ok "), run.stdout


MUTATIONS = {
    "tile range": (PLAN, "j0 - o - g.window_right)", "j0 - o - g.window_right + 1)"),
    "boundary mask": (PLAN, "if (i1 >= g.seqlen_q || j1 >= g.seqlen_k) return true;",
                      "if (j1 > g.seqlen_k) return true;"),
    "int32 tile mask, keys": (PLAN, "return row < keys_left && col", "return row <= keys_left && col"),
    "int32 tile mask, queries": (PLAN, "col < queries_left &&", "col <= queries_left &&"),
    "deterministic rank": (PLAN, "return n_block - key_block_range(g, m_tile, block_m, block_n).begin;",
                           "return n_block - key_block_range(g, m_tile, block_m, block_n).begin + (n_block > 3);"),
    "claim": (HANDOFF, "? grid + claimed : kNoTile", "? grid + claimed - (claimed == 3) : kNoTile"),
    "hand-off parity": (HANDOFF, "return (passed / kTileSlots) & 1u;", "return passed & 1u;"),
    # The model's mirror of the kernel (deterministic dQ by TMA): a consumer that exits still owing a turn.
    "turn owed at exit": (CHECK, "pass_turn(r);\n          r.done = true;", "r.done = true;"),
    # ... and a zeroing barrier that one consumer skips (a condition the two consumers would compute differently).
    "zeroing barrier one-sided": (CHECK, "if ((*seqs)[r.b].seqlen_q - r.m * bm < bm) {",
                                  "if ((*seqs)[r.b].seqlen_q - r.m * bm < bm && r.warp < 4) {"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_check_catches_a_broken_plan(tmp_path, name):
    target, old, new = MUTATIONS[name]
    (tmp_path / "cuda").mkdir()
    for source in (PLAN, HANDOFF, CHECK):
        text = source.read_text()
        if source == target:
            assert text.count(old) == 1, f"mutation {name!r}: {old!r} not found once in {source.name}; update the test"
            text = text.replace(old, new)
        (tmp_path / "cuda" / source.name).write_text(text)
    run = _build_and_run(tmp_path, tmp_path, tmp_path / "cuda" / CHECK.name)
    assert run.returncode != 0 and "FAIL" in run.stdout, f"the check missed the {name} mutation:\n{run.stdout}"


def test_tile_table_rows():
    """The advisor-parsed table: one row per supported head dim, the shapes the kernel's static_asserts accept."""
    rows = re.findall(r"^\s*X\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)(?: \\)?$", TABLE.read_text(), re.M)
    table = {int(r[0]): tuple(map(int, r[1:])) for r in rows}
    assert sorted(table) == [64, 96, 128, 192, 256]
    assert "// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm" in TABLE.read_text()
    elem, col_block = 2, 64
    for head_dim, (block_m, block_n, stages, warpgroups, ctas) in table.items():
        assert block_m == 64 and block_n in (64, 128) and warpgroups == 3 and ctas == 1, head_dim
        d_smem = -(-head_dim // col_block) * col_block  # tiles are stored as whole 64-column blocks
        p_and_ds = 1 if block_n == 128 else 2  # dS^T; P^T too where dV / dK are SS (shared keys, block_n = 64)
        smem = (2 * block_n * d_smem + stages * 2 * block_m * d_smem + p_and_ds * block_n * block_m) * elem
        assert smem + 1024 + 2048 <= 227 * 1024, f"D={head_dim}: {smem} B of tiles (+ alignment, LSE, barriers)"
