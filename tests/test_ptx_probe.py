"""The sm_90a PTX layer (csrc/cuda/ptx/) assembled in every form it offers, checked in SASS; no GPU needed.

csrc/cuda/probe/ptx_probe.cu instantiates what the extension's kernels do not use (wgmma N = 64 and 128, fp16, the
register-A form, transposes and negation; TMA of rank 3-5; TMA reduce-add; named barriers), so ptxas assembles all
of it. The SASS must show each flag where the wrapper put it: scale-d = false -> "RZ, !UPT" (D not read),
imm-scale-a = -1 -> ".negA", trans -> ".tnspA" / ".tnspB", register A -> a register operand before the B
descriptor; the reduce-add as UTMAREDG.{2D,3D}.ADD, st.shared.v2.f32 as STS.64.

Needs nvcc (CUDA_HOME, /usr/local/cuda or PATH) and cuobjdump; skipped with the reason otherwise.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_build_checks import find_cuobjdump

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "csrc" / "cuda" / "probe" / "ptx_probe.cu"
NVCC_FLAGS = ["-std=c++20", "-O3", "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'csrc'}", "-c"]
SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+([^;]*);")
WGMMA_NS = [64, 128, 256]
WGMMA_TYPES = {"bf16": ("MmaTypeE0E", ".BF16"), "f16": ("MmaTypeE1E", "")}  # mangled template argument, SASS suffix


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


@functools.lru_cache(maxsize=1)
def _compile(tmp_dir: str) -> dict[str, list[str]] | str:
    """{mangled kernel name: [instruction text, ...]} of the probe's sm_90a SASS, or the reason to skip."""
    nvcc, cuobjdump = find_nvcc(), find_cuobjdump()
    if nvcc is None:
        return "nvcc not found (set CUDA_HOME): the sm_90a PTX layer cannot be assembled here"
    if cuobjdump is None:
        return "cuobjdump not found (`pip install nvidia-cuda-cuobjdump`, as scripts/install.sh does)"
    obj = Path(tmp_dir) / "ptx_probe.o"
    proc = subprocess.run([nvcc, *NVCC_FLAGS, str(PROBE), "-o", str(obj), "-Xptxas", "-v"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.fail(f"nvcc could not build {PROBE.name}:\n{proc.stderr[-4000:]}")
    assert "C7508" not in proc.stderr, f"ptxas ignored setmaxnreg:\n{proc.stderr}"
    spills = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
    assert spills and all(s == ("0", "0", "0") for s in spills), f"stack or spills in the probe: {spills}"
    sass = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    kernels: dict[str, list[str]] = {}
    current = None
    for line in sass.splitlines():
        if line.strip().startswith("Function : "):
            current = kernels.setdefault(line.split(":", 1)[1].strip(), [])
        elif current is not None and (m := SASS_LINE.match(line)):
            current.append(" ".join(t for t in m.group(1).split() if not t.startswith("@")))
    return kernels


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> dict[str, list[str]]:
    loaded = _compile(str(tmp_path_factory.mktemp("ptx_probe")))
    if isinstance(loaded, str):
        pytest.skip(loaded)
    return loaded


def kernel(kernels: dict, *parts: str) -> list[str]:
    found = [name for name in kernels if all(p in name for p in parts)]
    assert len(found) == 1, f"expected one kernel matching {parts}, found {found} among {list(kernels)}"
    return kernels[found[0]]


@pytest.mark.parametrize("type_name", WGMMA_TYPES)
@pytest.mark.parametrize("n", WGMMA_NS)
def test_wgmma_forms_assemble_with_their_flags(kernels, n, type_name):
    mangled_type, sass_type = WGMMA_TYPES[type_name]
    code = kernel(kernels, "wgmma_probe_kernel", f"ILi{n}E", mangled_type)
    opcode = f"HGMMA.64x{n}x16.F32{sass_type}"
    hgmma = [ins for ins in code if ins.split()[0] == opcode]
    assert len(hgmma) == 5, f"expected 5 {opcode} (3 SS + 2 RS), got {hgmma}"
    ss = [ins for ins in hgmma if ins.split()[1].rstrip(",") == "R24" and "gdesc" in ins.split()[2]]
    rs = [ins for ins in hgmma if re.match(r"R\d+,", ins.split()[2])]
    assert len(ss) == 3 and len(rs) == 2, f"SS / RS forms not as issued: {hgmma}"
    assert any("RZ, !UPT" in ins for ins in ss), f"scale-d = false (overwrite D) missing: {ss}"
    assert any(".tnspA.tnspB" in ins for ins in ss), f"trans-a/trans-b = 1 missing: {ss}"
    assert any(".negA" in ins for ins in ss), f"imm-scale-a = -1 missing: {ss}"
    assert any(".tnspB" in ins for ins in rs) and any(".tnspB" not in ins for ins in rs), f"RS trans-b: {rs}"
    assert sum(ins.startswith("WARPGROUP.ARRIVE") for ins in code) == 1  # wgmma.fence
    assert any(ins.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x0") for ins in code)  # wgmma.wait_group 0
    assert not [ins for ins in code if ins.split()[0].split(".")[0] in ("LDL", "STL")]


def test_tma_sync_and_register_forms_assemble(kernels):
    code = kernel(kernels, "tma_sync_probe_kernel")
    opcodes = [ins.split()[0] for ins in code]
    for rank in (2, 3, 4, 5):
        assert f"UTMALDG.{rank}D" in opcodes, f"no rank-{rank} TMA load"
        assert f"UTMASTG.{rank}D" in opcodes, f"no rank-{rank} TMA store"
    for rank in (2, 3):  # cp.reduce.async.bulk.tensor .add (the type is the map's: not in the opcode)
        assert f"UTMAREDG.{rank}D.ADD" in opcodes, f"no rank-{rank} TMA reduce-add"
    for opcode in ("STS.64", "UTMACCTL.PF", "SYNCS.EXCH.64", "SYNCS.ARRIVE.TRANS64", "SYNCS.ARRIVE.TRANS64.A1T0",
                   "SYNCS.PHASECHK.TRANS64.TRYWAIT", "STSM.16.M88.4", "BAR.ARV", "FENCE.VIEW.ASYNC.S"):
        assert opcode in opcodes, f"{opcode} missing"
    # setmaxnreg with the requested counts: 24 (0x18) down for the producer, 240 (0xf0) up for the consumer.
    assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code, [i for i in code if i.startswith("USETMAXREG")]
    assert any(re.fullmatch(r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, 0xf0", ins) for ins in code)
    assert not [ins for ins in code if ins.split()[0].split(".")[0] in ("LDL", "STL")]
