"""What ptxas says about the sm_90a backward (csrc/cuda/bwd_sm90.cu, all 10 main-kernel instantiations, default and
under the -DFLASHCORE_BWD_SM90_DQ_LAG switches); no GPU.

tests/test_build_checks.py holds opcode counts and resources of the built binary (csrc/cuda/resources.json). This
file compiles the backward itself to see what the binary cannot show:
  * ptxas' warnings: C7508 (setmaxnreg dropped), C7510-C7520 (wgmmas serialized behind compiler-inserted
    warpgroup waits: a silent 2x slowdown);
  * spills and stack in every instantiation (the consumers' margin is thin: D = 128 spilled at 232 registers);
  * one atomic, the dynamic scheduler's item claim (the dQ adds and semaphore releases are REDs, not ATOMs).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from test_build_checks import find_cuobjdump
from test_fwd_sm90_sass import ROOT, _include_flags, parse_sass
from test_ptx_probe import find_nvcc
from wgmma_hazards import wgmma_register_hazards

KERNELS = 10  # head dims 64 / 96 / 128 / 192 / 256 x fp16 / bf16


# The default build, the switch that puts dQ one tile behind (-DFLASHCORE_BWD_SM90_DQ_LAG, bwd_sm90.md v3: D = 64 /
# 96 / 128 change, D = 192 / 256 are the default's) and the same with the S^T ping-pong: every check holds for all.
BUILDS = {"default": [], "dq_lag": ["-DFLASHCORE_BWD_SM90_DQ_LAG"],
          "dq_lag_pingpong": ["-DFLASHCORE_BWD_SM90_DQ_LAG_PINGPONG"]}


@pytest.fixture(scope="module", params=list(BUILDS))
def compiled(request, tmp_path_factory):
    nvcc, cuobjdump = find_nvcc(), find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        pytest.skip("nvcc or cuobjdump not found: the sm_90a backward cannot be compiled here")
    obj = tmp_path_factory.mktemp("bwd_sass") / "bwd_sm90.o"
    proc = subprocess.run([nvcc, "-std=c++20", "-O3", "--use_fast_math", "--expt-relaxed-constexpr",
                           "-gencode=arch=compute_90a,code=sm_90a", "-DFLASHCORE_CUDA=1", *_include_flags(),
                           *BUILDS[request.param], "-c",
                           str(ROOT / "csrc" / "cuda" / "bwd_sm90.cu"), "-o", str(obj), "-Xptxas", "-v"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sass = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    return proc.stderr, parse_sass(sass)


def test_ptxas_keeps_the_pipeline_and_spills_nothing(compiled):
    log, _ = compiled
    bad = [line for line in log.splitlines() if re.search(r"\(C75(0[8-9]|1\d|20)\)", line)]
    assert not bad, "ptxas serialized wgmmas or dropped setmaxnreg:\n" + "\n".join(bad)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    # Every function of the file (main kernels, dq convert): no stack, no spills.
    assert len(frames) >= KERNELS and all(f == ("0", "0", "0") for f in frames), frames


def test_one_item_claim(compiled):
    """The dynamic scheduler's claim is the main kernel's only ATOM, issued by the producer alone (tile_handoff.h):
    a second one would mean a consumer claims too, and the roles would no longer walk one sequence."""
    _, kernels = compiled
    main = {name: code for name, code in kernels.items() if "bwd_sm90_kernel" in name}
    assert len(main) == KERNELS, list(kernels)
    for name, code in main.items():
        atomics = [i.split()[0] for i in code if i.split()[0].startswith("ATOM")]
        assert atomics == ["ATOMG.E.ADD.STRONG.GPU"], (name, atomics)
        assert not [i for i in code if i.split()[0].startswith(("LDL", "STL"))], name


# Register-A (RS) HGMMAs of the dV += P^T dO and dK += dS^T Q GEMMs (bwd_sm90_config.cuh kRsDkv): 2 GEMMs x 4 K
# steps of 16 queries x the consumer's column pieces (D = 64: one of 64; 96: 64 + 32; 128: 64 + 64). D = 192 / 256
# share their keys between the consumers and keep the SS form.
RS_HGMMAS = {64: 8, 96: 16, 128: 16, 192: 0, 256: 0}


def test_dkv_gemms_take_a_from_registers(compiled):
    _, kernels = compiled
    for name, code in kernels.items():
        m = re.search(r"bwd_sm90_kernelILi(\d+)E", name)
        if m is None:
            continue
        hgmma = [i for i in code if i.startswith("HGMMA.")]
        rs = [i for i in hgmma if re.match(r"HGMMA\.\S+ R\d+, R\d+, gdesc", i)]
        assert len(rs) == RS_HGMMAS[int(m.group(1))], (name, rs)
        assert all(".tnspB" in i for i in rs), (name, rs)  # B (dO or Q) is MN-major, as TMA wrote it


def test_no_register_writes_under_inflight_wgmmas(compiled):
    """ptxas kept every in-flight wgmma's registers untouched (tests/wgmma_hazards.py): the register-A P^T / dS^T
    of dV / dK until their waits, and every accumulator."""
    _, kernels = compiled
    for name, code in kernels.items():
        if "bwd_sm90_kernel" in name:
            assert wgmma_register_hazards(code) == [], name


def test_register_hazard_check_can_fail():
    """The check itself, on hand-written listings: a write to an in-flight A fragment or accumulator is reported,
    the same write after the completing wait is not, and wait_group N counts the groups committed since."""
    rs = "HGMMA.64x64x16.F32.BF16 R56, R184, gdesc[UR12].tnspB, R56, gsb0"
    ss = "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0"
    pack = "F2FP.BF16.F32.PACK_AB R186, R25, R24"
    scale = "FMUL R60, R60, R3"
    assert wgmma_register_hazards([rs, pack, "WARPGROUP.DEPBAR.LE gsb0, 0x0"])  # A overwritten in flight
    assert wgmma_register_hazards([rs, scale, "WARPGROUP.DEPBAR.LE gsb0, 0x0"])  # accumulator touched in flight
    assert wgmma_register_hazards([rs, "WARPGROUP.DEPBAR.LE gsb0, 0x0", pack, scale]) == []
    assert wgmma_register_hazards([rs, ss, "WARPGROUP.DEPBAR.LE gsb0, 0x1", pack,  # 1 later group: rs done
                                   "WARPGROUP.DEPBAR.LE gsb0, 0x0"]) == []
    assert wgmma_register_hazards([rs, "WARPGROUP.DEPBAR.LE gsb0, 0x1", pack, "WARPGROUP.DEPBAR.LE gsb0, 0x0"])
    assert wgmma_register_hazards([rs, pack])  # never completed
    assert wgmma_register_hazards([rs, "HGMMA.64x64x16.F32.BF16 R184, gdesc[UR8], R184, gsb0",
                                   "WARPGROUP.DEPBAR.LE gsb0, 0x0"])  # another wgmma's accumulators over A
