"""Checks on the gfx942 machine code of flashcore's HIP kernels that need neither ROCm nor an AMD GPU.

Every kernel source listed in csrc/hip/isa_budget.json is compiled for gfx942, device code only, by a stock
clang (Debian/Ubuntu `clang-19`; scripts/install.sh installs it) with csrc/hip/compat.h standing in for
hip_runtime.h (FLASHCORE_HIP_NO_RUNTIME). The assembly's kernel metadata and instructions are then held to the
table's plan, one row per kernel instantiation:
- at least one v_mfma (and at least `mfma` of them; rows with `mfma` 0 are kernels without matrix work, such
  as the backward's dQ postprocess), no scratch and no spills: private segment 0, no VGPR spills, no SGPR
  spills (not even into VGPR lanes), no scratch_* instruction;
- LDS (group segment) equal to the plan and at most 64 KiB;
- unified VGPRs (arch VGPRs + AGPRs, what `.vgpr_count` reports on gfx942) at most 512 and at most the plan;
- occupancy (waves per SIMD, from registers and LDS) at least the plan.
The plan holds the values measured when it was written (with the clang major version the table names), so
growth fails and needs a deliberate edit; a drop passes with a warning to lower it. Another clang version (e.g.
ROCm's) gets the hard limits only. Every csrc/hip/*.hip must be listed (as a source, or as needing ROCm's
headers), and every compiled kernel must match exactly one row.

Occupancy on gfx942 (CDNA3): each SIMD has 512 unified VGPRs per lane shared by its waves. A wave's arch VGPRs
are rounded up to 4 (AGPRs start at that `accum_offset`), its total to the allocation granule of 8; waves per
SIMD = min(8, floor(512 / total)). A CU has 4 SIMDs and 64 KiB LDS: blocks per CU =
min(floor(4 * regs-waves-per-SIMD / waves-per-block), floor(65536 / LDS per block), floor(32 / waves-per-block)),
and the occupancy reported is blocks per CU * waves per block / 4.

Run as a script (`python tests/test_hip_isa.py`) to print the table of static figures for every kernel.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
TABLE_PATH = CSRC / "hip" / "isa_budget.json"
TABLE = json.loads(TABLE_PATH.read_text())

ARCH = "gfx942"
CLANG_FLAGS = ["-x", "hip", "-std=c++20", f"--offload-arch={ARCH}", "--cuda-device-only", "-nogpulib", "-nogpuinc",
               "-O3", "-S", "-DFLASHCORE_HIP_NO_RUNTIME", f"-I{CSRC}"]
CLANG_CANDIDATES = ["clang++-19", "clang++-20", "clang++-21", "/opt/rocm/llvm/bin/clang++"]

VGPRS_PER_SIMD_LANE = 512   # unified VGPR file per SIMD, per lane
VGPR_GRANULE = 8            # allocation granule of the unified count
MAX_WAVES_PER_SIMD = 8
SIMDS_PER_CU = 4
LDS_PER_CU = 64 * 1024

COUNTED = {  # instruction groups reported per kernel: name -> regex on the mnemonic
    "mfma": r"v_mfma_",
    "ds_read_b128": r"ds_read_b128$",
    "ds_write": r"ds_write",
    "ds_bpermute": r"ds_bpermute",
    "global_load": r"global_load",
    "buffer_load": r"buffer_load",
    "global_store": r"global_store",
    "s_barrier": r"s_barrier$",
    "v_exp": r"v_exp_f32",
    "scratch": r"scratch_|buffer_store_dword.*off, s\[0:3\]",
}


def clang_major(clang: str) -> int:
    out = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"clang version (\d+)", out)
    return int(found.group(1)) if found else 0


def find_clang() -> str | None:
    env = os.environ.get("FLASHCORE_HIP_CLANG")
    for candidate in ([env] if env else []) + CLANG_CANDIDATES:
        path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if path:
            return path
    return None


# ------------------------------------------------------------------------------------------------ reading .s

def parse_metadata(asm: str) -> list[dict]:
    """The amdhsa.kernels list of the .amdgpu_metadata block: one dict per kernel, scalar fields only."""
    block = asm.split(".amdgpu_metadata", 1)[1].split(".end_amdgpu_metadata", 1)[0]
    kernels, current, in_kernels = [], None, False
    for line in block.splitlines():
        if line.startswith("amdhsa.kernels:"):
            in_kernels = True
            continue
        if in_kernels and re.match(r"^\S", line):  # next top-level key
            break
        m = re.match(r"^  (- )?\s*\.([\w]+):\s*(.*)$", line)
        if not in_kernels or not m:
            continue
        if m.group(1):  # "  - .key:" starts the next kernel
            current = {}
            kernels.append(current)
        key, value = m.group(2), m.group(3).strip()
        if current is not None and value and re.fullmatch(r"-?\d+", value):
            current.setdefault(key, int(value))
        elif current is not None and value:
            current.setdefault(key, value)
    return kernels


def kernel_body(asm: str, symbol: str) -> list[str]:
    """Mnemonics of `symbol`'s instructions, in program order."""
    start = asm.index(f"\n{symbol}:")
    end = asm.index(".Lfunc_end", start)
    ops = []
    for line in asm[start:end].splitlines()[1:]:
        s = line.strip()
        if not s or s.startswith((".", ";", "//")) or s.endswith(":"):
            continue
        ops.append(s.split()[0])
    return ops


def accum_offset(asm: str, symbol: str) -> int:
    m = re.search(rf"\.amdhsa_kernel {re.escape(symbol)}\n(.*?)\.end_amdhsa_kernel", asm, re.S)
    found = re.search(r"\.amdhsa_accum_offset (\d+)", m.group(1)) if m else None
    return int(found.group(1)) if found else 0


def occupancy(vgpr_total: int, lds: int, waves_per_block: int) -> int:
    """Waves per SIMD a CU can hold of this kernel (see the module docstring)."""
    alloc = -(-max(vgpr_total, 1) // VGPR_GRANULE) * VGPR_GRANULE
    reg_waves = min(MAX_WAVES_PER_SIMD, VGPRS_PER_SIMD_LANE // alloc)
    blocks = (SIMDS_PER_CU * reg_waves) // waves_per_block
    blocks = min(blocks, (SIMDS_PER_CU * MAX_WAVES_PER_SIMD) // waves_per_block)
    if lds:
        blocks = min(blocks, LDS_PER_CU // lds)
    return blocks * waves_per_block // SIMDS_PER_CU


@functools.lru_cache(maxsize=None)
def compiled(clang: str) -> dict[str, dict]:
    """{mangled kernel name: figures} over every source of the table, compiled in parallel."""
    out_dir = ROOT / "build" / "isa"
    out_dir.mkdir(parents=True, exist_ok=True)

    def compile_one(source: str) -> tuple[str, str]:
        asm_path = out_dir / (Path(source).stem + f".{ARCH}.s")
        result = subprocess.run([clang, *CLANG_FLAGS, str(CSRC / source), "-o", str(asm_path)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{clang} failed on {source}:\n{result.stderr}")
        return source, asm_path.read_text()

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        outputs = list(pool.map(compile_one, TABLE["sources"]))
    kernels = {}
    for source, asm in outputs:
        for meta in parse_metadata(asm):
            symbol = meta.get("symbol", meta["name"]).removesuffix(".kd")
            ops = kernel_body(asm, symbol)
            counts = {name: sum(1 for op in ops if re.search(rx, op)) for name, rx in COUNTED.items()}
            kernels[meta["name"]] = dict(source=source, meta=meta, counts=counts, accum_offset=accum_offset(asm, symbol))
    return kernels


def figures(kernel: dict, row: dict) -> dict:
    meta = kernel["meta"]
    total = meta["vgpr_count"]
    lds = meta["group_segment_fixed_size"]
    return dict(vgpr_total=total, arch_vgpr=kernel["accum_offset"] if meta.get("agpr_count") else total,
                agpr=meta.get("agpr_count", 0), sgpr=meta.get("sgpr_count", 0), lds=lds,
                waves_per_simd=occupancy(total, lds, row["waves_per_block"]), **kernel["counts"])


def match_rows(kernels: dict) -> dict[str, dict]:
    """{mangled name: row}; asserts each kernel matches exactly one row and each row a kernel."""
    matched, problems = {}, []
    for name in kernels:
        rows = [r for r in TABLE["kernels"] if r["match"] in name]
        if len(rows) != 1:
            problems.append(f"{name}: matches {len(rows)} rows of {TABLE_PATH.name} ({[r['name'] for r in rows]})")
        else:
            matched[name] = rows[0]
    for row in TABLE["kernels"]:
        if row not in matched.values():
            problems.append(f"row '{row['name']}' matches no compiled kernel")
    assert not problems, "\n".join(problems)
    return matched


# ------------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def kernels():
    clang = find_clang()
    if clang is None and os.environ.get("CI") == "true":  # CI must prove the ISA, not skip it
        pytest.fail("CI=true but no clang with the AMDGPU target: scripts/install.sh failed to install clang-19")
    if clang is None:
        pytest.skip(f"no clang with the AMDGPU target found ({', '.join(CLANG_CANDIDATES)}; or set FLASHCORE_HIP_CLANG)"
                    "; scripts/install.sh installs clang-19 with apt-get")
    return compiled(clang)


def test_every_hip_source_is_listed():
    listed = set(TABLE["sources"]) | set(TABLE["needs_rocm"])
    on_disk = {str(p.relative_to(CSRC)) for p in (CSRC / "hip").rglob("*.hip")}
    assert not on_disk - listed, f"add these to {TABLE_PATH.name} (sources, or needs_rocm with a reason): " \
                                 f"{sorted(on_disk - listed)}"
    assert not listed - on_disk, f"{TABLE_PATH.name} lists files that do not exist: {sorted(listed - on_disk)}"


def test_every_kernel_has_a_plan(kernels):
    match_rows(kernels)


def test_budgets(kernels):
    """Hard limits always; the register / occupancy plan only with the clang major version it was measured with
    (another register allocator gives other counts: a warning says so instead)."""
    clang = find_clang()
    same_compiler = clang_major(clang) == TABLE["clang_major"]
    if not same_compiler:
        warnings.warn(f"{clang} is clang {clang_major(clang)}; {TABLE_PATH.name} was measured with clang "
                      f"{TABLE['clang_major']}: checking hard limits only, not the register / occupancy plan")
    problems, lower = [], []
    for name, row in match_rows(kernels).items():
        f = figures(kernels[name], row)
        meta = kernels[name]["meta"]
        where = f"{row['name']} ({kernels[name]['source']})"
        least_mfma = row.get("mfma", 1)  # 0: a kernel without matrix work (the backward's dQ postprocess)
        if f["mfma"] < least_mfma:
            problems.append(f"{where}: {f['mfma']} v_mfma instructions, expected at least {least_mfma}")
        # SGPR spills land in lanes of a VGPR (v_writelane / v_readlane, no memory), and are refused all the same.
        for key in ("private_segment_fixed_size", "vgpr_spill_count", "sgpr_spill_count"):
            if meta.get(key, 0):
                problems.append(f"{where}: {key} = {meta[key]} (scratch memory / spills)")
        if f["scratch"]:
            problems.append(f"{where}: {f['scratch']} scratch instructions")
        if f["lds"] > LDS_PER_CU or f["lds"] != row["lds"]:
            problems.append(f"{where}: LDS {f['lds']} bytes, plan {row['lds']} (at most {LDS_PER_CU})")
        if f["vgpr_total"] > VGPRS_PER_SIMD_LANE or (same_compiler and f["vgpr_total"] > row["vgpr_total"]):
            problems.append(f"{where}: {f['vgpr_total']} VGPRs (arch + AGPR), plan {row['vgpr_total']}")
        elif same_compiler and f["vgpr_total"] < row["vgpr_total"]:
            lower.append(f"{where}: {f['vgpr_total']} VGPRs, plan {row['vgpr_total']}")
        if same_compiler and f["waves_per_simd"] < row["waves_per_simd"]:
            problems.append(f"{where}: occupancy {f['waves_per_simd']} waves/SIMD, plan {row['waves_per_simd']}")
    if lower:
        warnings.warn(f"fewer registers than {TABLE_PATH.name} plans; lower the plan: " + "; ".join(lower))
    assert not problems, "\n".join(problems)


def report(kernels: dict) -> str:
    keys = ["vgpr_total", "arch_vgpr", "agpr", "sgpr", "lds", "waves_per_simd", "mfma", "ds_read_b128", "ds_write",
            "buffer_load", "global_load", "global_store", "s_barrier", "v_exp"]
    lines = ["| kernel | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, row in sorted(match_rows(kernels).items(), key=lambda item: TABLE["kernels"].index(item[1])):
        f = figures(kernels[name], row)
        lines.append(f"| {row['name']} | " + " | ".join(str(f[k]) for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    clang = find_clang()
    if clang is None:
        sys.exit("no clang with the AMDGPU target found")
    print(report(compiled(clang)))
