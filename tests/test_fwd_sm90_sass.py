"""What ptxas says about the sm_90a forward, and the form of every wgmma in its SASS; no GPU needed.

tests/test_build_checks.py holds opcode counts and resources of the built binary (csrc/cuda/resources.json). This
file compiles two instantiations itself (head dims 64 and 256: every wgmma N of the extremes, 1 and 4 panels), and
head dim 128 under the bisecting switch -DFLASHCORE_FWD_SM90_D128_N176 (176-key tiles: not in the binary, and the
tightest register fit), and head dims 64 and 128 under -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (an item's epilogue under
the next item's first S), to see what the binary cannot show:
  * ptxas' warnings: C7508 (setmaxnreg dropped), C7510-C7520 (wgmmas serialized behind compiler-inserted
    warpgroup waits, e.g. when a register a wgmma still reads is redefined: a silent 2x slowdown), spills, stack;
  * the S = Q K^T wgmmas are SS (both operands by descriptor, the first K slice overwriting S: "RZ, !UPT");
  * the O += P V wgmmas are RS (a register A operand: P) with a transposed (MN-major) B: V read in place;
  * one wgmma.fence per turn (WARPGROUP.ARRIVE x3, pipelined x4) and setmaxnreg 24 / 240 (D=64, 3 consumers: 24 / 160);
  * one atomic, the dynamic scheduler's tile claim.
"""

from __future__ import annotations

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from test_build_checks import find_cuobjdump
from test_ptx_probe import SASS_LINE, find_nvcc

ROOT = Path(__file__).resolve().parents[1]
# id -> (head_dim, block_n, the consumers' setmaxnreg, extra nvcc flags). block_n: csrc/tiles/sm90_fwd.h (the
# tile-table test ties them), or fwd/traits.cuh kD128SwitchBlockN under the switch. setmaxnreg: 3 consumer
# warpgroups at D=64 (160 each), 2 elsewhere (240; fwd/traits.cuh). Under -DFLASHCORE_FWD_SM90_ITEM_PIPELINE
# (the consumers pipelined across items) at the extremes it takes effect at: 3 consumers, and D=128's 240 registers.
ITEM_PIPELINE = "-DFLASHCORE_FWD_SM90_ITEM_PIPELINE"
CASES = {"D64": (64, 128, 160, []), "D256": (256, 80, 240, []),
         "D128_N176": (128, 176, 240, ["-DFLASHCORE_FWD_SM90_D128_N176"]),
         "D64_ITEM_PIPELINE": (64, 128, 160, [ITEM_PIPELINE]), "D128_ITEM_PIPELINE": (128, 128, 240, [ITEM_PIPELINE])}


def parse_sass(text: str) -> dict[str, list[str]]:
    """{mangled kernel name: [instruction text without predicates, ...]}."""
    kernels: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.strip().startswith("Function : "):
            current = kernels.setdefault(line.split(":", 1)[1].strip(), [])
        elif current is not None and (m := SASS_LINE.match(line)):
            current.append(" ".join(t for t in m.group(1).split() if not t.startswith("@")))
    return kernels


def _include_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths
    return [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{ROOT / 'csrc'}"]


@pytest.fixture(scope="module", params=list(CASES))
def compiled(request, tmp_path_factory):
    head_dim, _, _, flags = CASES[request.param]
    nvcc, cuobjdump = find_nvcc(), find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        pytest.skip("nvcc or cuobjdump not found: the sm_90a forward cannot be compiled here")
    obj = tmp_path_factory.mktemp("fwd_sass") / f"fwd_{request.param}.o"
    src = ROOT / "csrc" / "cuda" / f"fwd_sm90_d{head_dim}.cu"
    proc = subprocess.run([nvcc, "-std=c++20", "-O3", "--use_fast_math", "--expt-relaxed-constexpr",
                           "-gencode=arch=compute_90a,code=sm_90a", "-DFLASHCORE_CUDA=1", *flags, *_include_flags(),
                           "-c", str(src), "-o", str(obj), "-Xptxas", "-v"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sass = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    return request.param, proc.stderr, parse_sass(sass)


def test_ptxas_keeps_the_pipeline(compiled):
    _, log, _ = compiled
    bad = [line for line in log.splitlines() if re.search(r"\(C75(0[8-9]|1\d|20)\)", line)]
    assert not bad, "ptxas serialized wgmmas or dropped setmaxnreg:\n" + "\n".join(bad)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(frames) == 2 and all(f == ("0", "0", "0") for f in frames), frames


def test_wgmma_forms(compiled):
    case, _, kernels = compiled
    head_dim, block_n, consumer_regs, flags = CASES[case]
    # GEMM batches: prologue (S), loop (S + P V), tail (P V); pipelined across items, also the tail that issues
    # the last P V with the next item's first S (consumer.cuh).
    s_batches, pv_batches = (3, 3) if ITEM_PIPELINE in flags else (2, 2)
    fwd = {name: code for name, code in kernels.items() if "fwd_kernel" in name}
    assert len(fwd) == 2, list(kernels)  # bf16 and fp16
    for name, code in fwd.items():
        suffix = ".BF16" if "Lb1E" in name else ""
        hgmma = [i for i in code if i.startswith("HGMMA")]
        # A from shared memory (S) or from registers (P V): tells them apart where block_n = head_dim (D=128)
        qk = [i for i in hgmma if i.split()[0] == f"HGMMA.64x{block_n}x16.F32{suffix}" and "gdesc" in i.split()[2]]
        pv = [i for i in hgmma if i.split()[0] == f"HGMMA.64x{head_dim}x16.F32{suffix}" and "gdesc" not in i.split()[2]]
        assert len(qk) + len(pv) == len(hgmma), hgmma  # no wgmma of another shape or form
        assert len(qk) == s_batches * head_dim // 16, qk  # D/16 K slices per batch
        assert len(pv) == pv_batches * block_n // 16, pv  # block_n/16 K slices per batch
        for ins in qk:  # SS: "HGMMA R24, gdesc[UR8], R24" or "..., RZ, !UPT"
            assert "gdesc" in ins.split()[2] and ".tnsp" not in ins, ins
        assert sum("RZ, !UPT" in i for i in qk) == s_batches, "the first K slice of each S batch must overwrite S"
        for ins in pv:  # RS with MN-major B: "HGMMA R24, R152, gdesc[UR4].tnspB, R24"
            assert re.match(r"R\d+,", ins.split()[2]) and ".tnspB" in ins and "!UPT" not in ins, ins
        fences = 4 if ITEM_PIPELINE in flags else 3  # one per kind of turn: prologue, loop, tail (+ the merged tail)
        assert sum(i.startswith("WARPGROUP.ARRIVE") for i in code) == fences, "one wgmma.fence per turn, none injected"
        assert "USETMAXREG.DEALLOC.CTAPOOL 0x18" in code
        alloc = f"{consumer_regs:#x}"
        assert any(re.fullmatch(rf"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, {alloc}", i) for i in code), alloc


def test_one_tile_claim(compiled):
    """The dynamic scheduler's claim is the kernel's only atomic, issued by the producer alone (schedule.h): a
    second ATOMG would mean a consumer claims too, and the roles would no longer walk one sequence."""
    _, _, kernels = compiled
    for name, code in kernels.items():
        if "fwd_kernel" in name:
            atomics = [i for i in code if i.split()[0].startswith(("ATOM", "RED"))]
            assert [i.split()[0] for i in atomics] == ["ATOMG.E.ADD.STRONG.GPU"], atomics


def test_no_register_writes_under_inflight_wgmmas(compiled):
    """ptxas kept every in-flight wgmma's registers untouched (tests/wgmma_hazards.py): the O accumulator and the
    packed P of O += P V until its wait, although the next tile's softmax runs while it is in flight."""
    from wgmma_hazards import wgmma_register_hazards
    _, _, kernels = compiled
    for name, code in kernels.items():
        if "fwd_kernel" in name:
            assert wgmma_register_hazards(code) == [], name
