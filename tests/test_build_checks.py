"""Checks on the compiled sm_90a kernels that need no GPU: their SASS and resources, read with cuobjdump.

What each kernel must look like is a table, csrc/cuda/resources.json: one row per kernel instantiation, matched
by a substring of its mangled name, giving opcodes that must appear (and how often), opcodes that must not,
whether all its loads come before its math, and its register / stack / shared / local-memory budget. A new kernel
is one new row there; this file does not change. Every kernel in the binary must match exactly one row.

Needs only the built library (flashcore/_C*.so) and torch, not the flashcore package. Skipped, with the reason,
when the extension was not built or was built for HIP; fails when torch is a CUDA build and nvcc is present (so
scripts/install.sh would have built it) but the library is missing.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE_PATH = ROOT / "csrc" / "cuda" / "resources.json"
TABLE = json.loads(TABLE_PATH.read_text())["kernels"]
REQUIRED_ARCH = "sm_90a"  # every kernel must have SASS for it: the H100 code path, wgmma and setmaxnreg included
FORBIDDEN_EVERYWHERE = ("LDL", "STL")  # local-memory loads/stores: register spills or dynamically indexed arrays
RESOURCE_KEYS = {"registers": "REG", "stack": "STACK", "shared": "SHARED", "local": "LOCAL"}  # table -> cuobjdump

SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+([^;]*);")  # "  /*0600*/  @!P0 LDG.E.128 R12, [R4.64] ;"
RESOURCE_PAIR = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")  # "REG:48 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:656"


# ---------------------------------------------------------------------------------------------- locating things

def find_extension() -> Path | None:
    """flashcore/_C*.so: in the source tree (editable install, tests run from the repo), else site-packages."""
    for base in (ROOT, Path(sysconfig.get_paths()["platlib"])):
        hits = sorted((base / "flashcore").glob("_C*.so"))
        if hits:
            return hits[0]
    return None


def nvcc_present() -> bool:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return shutil.which("nvcc") is not None or any(h and os.path.exists(os.path.join(h, "bin", "nvcc")) for h in homes)


def find_cuobjdump() -> str | None:
    """The nvidia-cuda-cuobjdump pip package first (scripts/install.sh installs it), then the CUDA toolkit."""
    spec = importlib.util.find_spec("nvidia")
    for location in (spec.submodule_search_locations or []) if spec else []:
        hits = sorted(glob.glob(os.path.join(location, "*", "bin", "cuobjdump")))  # cu13/bin, cuda_cuobjdump/bin
        if hits:
            return hits[-1]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "cuobjdump"), os.X_OK):
            return os.path.join(home, "bin", "cuobjdump")
    return shutil.which("cuobjdump")


# ---------------------------------------------------------------------------------------------- reading cuobjdump

def parse_sass(text: str) -> dict[tuple[str, str], list[str]]:
    """{(arch, mangled kernel name): [opcode, ...] in program order}; predicates (@P0, @!P1) dropped."""
    kernels: dict[tuple[str, str], list[str]] = {}
    arch, current = None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("arch = "):
            arch, current = stripped.split("=", 1)[1].strip(), None
        elif stripped.startswith("Function : "):
            current = kernels.setdefault((arch, stripped.split(":", 1)[1].strip()), [])
        elif current is not None and (m := SASS_LINE.match(line)):
            tokens = [t for t in m.group(1).split() if not t.startswith("@")]
            if tokens:
                current.append(tokens[0])
    return kernels


def parse_resources(text: str) -> dict[tuple[str, str], dict[str, int]]:
    """{(arch, mangled kernel name): {"REG": 48, "STACK": 0, "SHARED": 0, "LOCAL": 0, ...}}."""
    usage: dict[tuple[str, str], dict[str, int]] = {}
    arch, pending = None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("arch = "):
            arch = stripped.split("=", 1)[1].strip()
        elif stripped.startswith("Function ") and stripped.endswith(":"):
            pending = stripped[len("Function "):-1].strip()
        elif pending is not None:
            usage[(arch, pending)] = {k: int(v) for k, v in RESOURCE_PAIR.findall(stripped)}
            pending = None
    return usage


class Binary:
    def __init__(self, path: Path, info: dict, cuobjdump: str):
        self.path, self.info, self.cuobjdump = path, info, cuobjdump
        self.elf_archs = sorted(set(re.findall(r"\.(sm_\w+)\.cubin", self.run("--list-elf"))))
        self.ptx = self.run("--list-ptx", check=False).strip()
        self.sass = parse_sass(self.run("--dump-sass"))
        self.resources = parse_resources(self.run("--dump-resource-usage"))

    def run(self, flag: str, check: bool = True) -> str:
        proc = subprocess.run([self.cuobjdump, flag, str(self.path)], capture_output=True, text=True)
        if check and proc.returncode != 0:
            pytest.fail(f"{self.cuobjdump} {flag} {self.path} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if check else proc.stdout + proc.stderr

    def kernels(self, arch: str = REQUIRED_ARCH) -> list[str]:
        return sorted(name for (a, name) in self.sass if a == arch)


@functools.lru_cache(maxsize=1)
def _load_binary() -> Binary | str:
    """The binary under test, or the reason to skip it."""
    path = find_extension()
    if path is None:
        if torch.version.cuda and nvcc_present():
            pytest.fail(f"torch is a CUDA {torch.version.cuda} build and nvcc is present, so flashcore._C should have "
                        "been built, but no flashcore/_C*.so was found: run `bash scripts/install.sh`")
        return f"extension not built (pure-Python install; torch.version.cuda={torch.version.cuda})"
    try:
        torch.ops.load_library(str(path))  # runs the registrations; the same file `import flashcore._C` loads
    except OSError as exc:
        pytest.fail(f"{path} does not load against torch {torch.__version__}: {exc}")
    for lib in ("flashcore_sm90", "flashcore_gfx942"):
        try:
            info = json.loads(getattr(torch.ops, lib).build_info())
            break
        except (AttributeError, RuntimeError):
            continue
    else:
        pytest.fail(f"{path} registers no build_info op in flashcore_sm90 or flashcore_gfx942")
    if info.get("vendor") != "cuda":
        return f"extension built for {info.get('vendor')} ({info.get('archs')}), not CUDA: no SASS to check"
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        pytest.fail("cuobjdump not found: `pip install nvidia-cuda-cuobjdump` (scripts/install.sh does) or set CUDA_HOME")
    return Binary(path, info, cuobjdump)


@pytest.fixture
def binary() -> Binary:
    loaded = _load_binary()
    if isinstance(loaded, str):
        pytest.skip(loaded)
    return loaded


def row_kernels(binary: Binary, row: dict) -> list[str]:
    found = [name for name in binary.kernels() if row["match"] in name]
    assert found, (f"row {row['name']!r} of {TABLE_PATH.name} matches no {REQUIRED_ARCH} kernel (match "
                   f"{row['match']!r}); kernels: {binary.kernels()}")
    return found


# ---------------------------------------------------------------------------------------------- whole-binary checks

def test_binary_holds_exactly_the_declared_arch_specific_targets(binary):
    declared = sorted(binary.info["archs"])
    assert REQUIRED_ARCH in declared, f"build_info says the build targets {declared}; {REQUIRED_ARCH} must be one"
    assert binary.elf_archs == declared, (f"cuobjdump finds SASS for {binary.elf_archs}; build_info declares "
                                          f"{declared}")
    assert binary.ptx == "" or "No PTX" in binary.ptx, f"PTX is embedded (JIT fallback to a non-'a' target):\n{binary.ptx}"


def test_every_kernel_has_sm90a_code(binary):
    everywhere = {name for (_, name) in binary.sass}
    assert everywhere, "cuobjdump --dump-sass found no kernels at all"
    missing = sorted(everywhere - set(binary.kernels()))
    assert not missing, f"kernels without {REQUIRED_ARCH} SASS: {missing}"


def test_every_kernel_has_exactly_one_row(binary):
    for name in binary.kernels():
        rows = [row["name"] for row in TABLE if row["match"] in name]
        assert len(rows) == 1, (f"kernel {name} matches {len(rows)} rows of {TABLE_PATH} ({rows}); add or fix its "
                                "row (SASS requirements and measured register/stack/shared budget)")


def test_no_local_memory_anywhere(binary):
    for (arch, name), opcodes in binary.sass.items():
        bad = sorted({op for op in opcodes if op.split(".")[0] in FORBIDDEN_EVERYWHERE})
        assert not bad, f"{arch} {name} uses local memory ({bad}): spills or a dynamically indexed array"


# ---------------------------------------------------------------------------------------------- per-row checks

@pytest.mark.parametrize("row", TABLE, ids=[row["name"] for row in TABLE])
def test_sass(binary, row):
    for name in row_kernels(binary, row):
        opcodes = binary.sass[(REQUIRED_ARCH, name)]
        for opcode, minimum in row.get("sass_min_counts", {}).items():
            count = opcodes.count(opcode)
            assert count >= minimum, f"{row['name']}: {opcode} appears {count} times, expected at least {minimum}"
        for prefix, minimum in row.get("sass_min_prefix_counts", {}).items():
            count = sum(op.startswith(prefix) for op in opcodes)
            assert count >= minimum, (f"{row['name']}: opcodes starting {prefix!r} appear {count} times in {name}, "
                                      f"expected at least {minimum}")
        bad = sorted(set(opcodes) & set(row.get("sass_forbid", [])))
        assert not bad, f"{row['name']}: forbidden opcodes {bad} in {name}"
        if "loads_before_math" in row:
            load, math = row["loads_before_math"]
            loads = [i for i, op in enumerate(opcodes) if op == load]
            maths = [i for i, op in enumerate(opcodes) if op.split(".")[0] == math]
            assert loads and maths, f"{row['name']}: no {load} or no {math} to order"
            assert loads[-1] < maths[0], (f"{row['name']}: a {load} (instruction {loads[-1]}) comes after the first "
                                          f"{math} (instruction {maths[0]}): loads no longer all in flight before "
                                          "the math")


@pytest.mark.parametrize("row", TABLE, ids=[row["name"] for row in TABLE])
def test_resources_within_budget(binary, row):
    for name in row_kernels(binary, row):
        usage = binary.resources.get((REQUIRED_ARCH, name))
        assert usage is not None, f"cuobjdump --dump-resource-usage lists no {REQUIRED_ARCH} entry for {name}"
        for key, field in RESOURCE_KEYS.items():
            if key not in row:
                continue
            measured, budget = usage[field], row[key]
            assert measured <= budget, (f"{row['name']}: {key} {measured} > budget {budget} in {TABLE_PATH.name}; "
                                        "if the growth is intended, raise the budget there and say why in the commit")
            if measured < budget:
                warnings.warn(f"{row['name']}: {key} {measured} < budget {budget}: lower the budget in "
                              f"{TABLE_PATH.name} so a regression back is caught", stacklevel=1)
