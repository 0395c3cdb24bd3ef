"""The -DFLASHCORE_SM90_WATCHDOG build switch (csrc/cuda/ptx/watchdog.cuh), checked in SASS; no GPU needed.

A small kernel waits on an mbarrier (mbarrier_wait) and on a global semaphore (the backward's spin_until_turn).
Without the switch neither the clock nor a trap nor a call appears; with it, both waits read %globaltimer and can
trap, and the clock is read only after a first failed try (a wait that succeeds at once is unchanged). That the
switch leaves the extension's SASS byte-identical was checked by building it both ways (commit message).

Needs nvcc and cuobjdump; skipped with the reason otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_build_checks import find_cuobjdump
from test_ptx_probe import NVCC_FLAGS, SASS_LINE, find_nvcc

KERNEL = r"""
#include "cuda/ptx/mbarrier.cuh"
#include "cuda/bwd_sm90_dq.cuh"

using namespace flashcore::sm90;

__global__ void watchdog_probe_kernel(const int32_t* sem, int32_t turn) {
  __shared__ alignas(8) uint64_t bar;
  if (threadIdx.x == 0) {
    ptx::mbarrier_init(&bar, blockDim.x);
    ptx::fence_mbarrier_init();
  }
  __syncthreads();
  ptx::mbarrier_arrive(&bar);
  ptx::mbarrier_wait(&bar, 0);
  if (threadIdx.x == 0) bwd::spin_until_turn(sem, turn);
}
"""


def sass(tmp_path: Path, *defines: str) -> list[str]:
    nvcc, cuobjdump = find_nvcc(), find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        pytest.skip("nvcc or cuobjdump not found (set CUDA_HOME; scripts/install.sh installs cuobjdump)")
    source = tmp_path / "watchdog_probe.cu"
    source.write_text(KERNEL)
    obj = tmp_path / f"watchdog_probe{len(defines)}.o"
    proc = subprocess.run([nvcc, *NVCC_FLAGS, *defines, str(source), "-o", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dump = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    return [m.group(1).strip() for line in dump.splitlines() if (m := SASS_LINE.match(line))]


def first(code: list[str], text: str) -> int:
    return next((i for i, ins in enumerate(code) if text in ins), -1)


def test_without_the_switch_no_clock_trap_or_call(tmp_path):
    code = sass(tmp_path)
    assert first(code, "SYNCS.PHASECHK.TRANS64.TRYWAIT") >= 0 and first(code, "LDG") >= 0
    for absent in ("GLOBALTIMER", "BPT.TRAP", "CALL"):
        assert first(code, absent) < 0, f"{absent} in the default build: {[i for i in code if absent in i]}"


def test_with_the_switch_both_waits_read_the_clock_after_a_first_try_and_can_trap(tmp_path):
    code = sass(tmp_path, "-DFLASHCORE_SM90_WATCHDOG")
    clocks = [i for i, ins in enumerate(code) if "GLOBALTIMER" in ins]
    assert len(clocks) >= 2, "one clock read per watched wait (mbarrier, semaphore)"
    assert first(code, "SYNCS.PHASECHK.TRANS64.TRYWAIT") < clocks[0], "the clock is read before the first try"
    assert first(code, "BPT.TRAP") >= 0 and first(code, "CALL") >= 0  # __trap(), and printf's vprintf
