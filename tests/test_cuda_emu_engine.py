"""The sm_90a grid model's engine (csrc/cuda_emu/engine.cpp), CUDA prelude and mbarrier / sync models, on small
kernels (csrc/cuda_emu/harness_engine.cpp) compiled for the host and loaded with ctypes.

What is checked: every shuffle kind on every lane against this file's own copy of CUDA's lane rules; __syncwarp;
named barriers with arrive-only producers and exited warps; mbarrier phases, parity and transaction counts with
asynchronous copies; a missing mbarrier wait that the random schedule exposes (stale 0xff shared memory) next to
the same kernel with the wait (uniform, priority and lazy-copy schedules); misuse errors; deadlock and divergence
reports; setmaxnreg's register pool; acquire / release semaphores between CTAs; a warp-specialized pipeline;
seeds (same seed = same interleaving, different seeds differ); warps running far ahead under the priority schedule;
the greedy lowest / highest warp first schedules (one warp to its end, spinners never starving their producer);
the timeout and the watchdog; failures naming CTA, warp and lane; fiber stack depth of 384-thread CTAs; grids larger
than what is resident running in waves (fresh shared memory and per-CTA state; waiting on a CTA that has not started
is a deadlock).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from emu_build import compile_objects, compiler, link_library

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
# (source, uses the CUDA prelude): the engine itself is plain C++, the harness is "CUDA" compiled for the host
SOURCES = [("emu_common/fiber.cpp", False), ("emu_common/watchdog.cpp", False), ("cuda_emu/engine.cpp", False),
           ("cuda_emu/engine_sync.cpp", False),
           ("cuda_emu/harness_engine.cpp", True)]
CXX_FLAGS = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-DFLASHCORE_SM90_EMU", f"-I{CSRC}",
             f"-I{CUDA_HOME / 'include'}"]
FULL = 0xFFFFFFFF
FIBER_STACK_BYTES = 1 << 20  # engine.cpp's kFiberStackBytes
LAZY = 1 << 30  # max_async_delay that leaves asynchronous work until nothing else can run
LOWEST_FIRST, HIGHEST_FIRST = 3, 4  # Schedule::kLowestFirst / kHighestFirst (emu.h)


class RunSpec(ctypes.Structure):  # csrc/cuda_emu/harness_engine.cpp RunSpec
    _fields_ = [("seed", ctypes.c_uint64), ("schedule", ctypes.c_int32), ("max_async_delay", ctypes.c_int32),
                ("timeout_seconds", ctypes.c_double), ("registers_per_thread", ctypes.c_int32),
                ("max_resident_ctas", ctypes.c_int32), ("stats", ctypes.c_uint64 * 6)]


def spec(seed: int = 1, schedule: int = 0, max_async_delay: int = 64, timeout: float = 60.0,
         registers: int = 0, resident: int = 0) -> RunSpec:
    return RunSpec(seed, schedule, max_async_delay, timeout, registers, resident)


@pytest.fixture(scope="module")
def lib():
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU model")
    if not (CUDA_HOME / "include" / "cuda_runtime.h").exists():
        pytest.skip(f"no CUDA headers under {CUDA_HOME}/include (set CUDA_HOME): the prelude builds on them")
    out = Path(tempfile.mkdtemp(prefix="cuda_emu_engine_"))
    start = time.monotonic()
    prelude = ["-include", str(CSRC / "cuda_emu/prelude.h")]
    jobs = [(CSRC / source, [*CXX_FLAGS, *(prelude if with_prelude else [])]) for source, with_prelude in SOURCES]
    objects = compile_objects(cxx, jobs, out, "the CPU model")
    library = link_library(cxx, objects, out / "libflashcore_cuda_emu_engine.so", "the CPU model")
    print(f"sm_90a CPU model built in {time.monotonic() - start:.1f} s")
    return ctypes.CDLL(str(library))


def call(fn, run: RunSpec, *args) -> str:
    """Runs one entry point; returns the launch's error ('' on success)."""
    error = ctypes.create_string_buffer(8192)
    rc = fn(ctypes.byref(run), *args, error, ctypes.c_int(len(error)))
    return "" if rc == 0 else error.value.decode()


def ints(n: int, fill: int = 0):
    return (ctypes.c_int32 * n)(*([fill] * n))


def floats(n: int):
    return (ctypes.c_float * n)()


# ---- warp collectives ------------------------------------------------------------------------------------------
def expected_shuffles(v: list[int]) -> list[list[int]]:
    """This file's copy of CUDA's shuffle rules: width segments; up/down/xor leaving the segment keep the value."""
    def idx(lane, src, width=32):
        return v[(lane & ~(width - 1)) + (src & (width - 1))]

    def down(lane, d, width=32):
        return v[lane + d] if (lane % width) + d < width else v[lane]

    def up(lane, d, width=32):
        return v[lane - d] if (lane % width) >= d else v[lane]

    def xor(lane, m, width=32):
        s = lane ^ m
        return v[s] if s < (lane & ~(width - 1)) + width else v[lane]

    ballot = sum(1 << lane for lane in range(32) if lane % 3 == 0)
    rows = []
    for lane in range(32):
        rows.append([idx(lane, (lane * 7 + 3) % 32), *(xor(lane, 1 << k) for k in range(5)), down(lane, 3),
                     up(lane, 5), idx(lane, 5, 8), xor(lane, 4, 4), down(lane, 1, 16),
                     ctypes.c_int32(ballot).value, int(v[lane ^ 8] + 0.5), v[lane ^ 2] % 256,
                     down(lane, 2) % 1024])
    return rows


@pytest.mark.parametrize("schedule", [0, 1, 2, 3, 4])
def test_shuffles_every_lane(lib, schedule):
    ctas, threads, k = 2, 96, 15
    out = ints(ctas * threads * k, -1)
    assert call(lib.fc_shuffles, spec(seed=7, schedule=schedule), ctas, threads, out) == ""
    for c in range(ctas):
        for w in range(threads // 32):
            values = [c * 1000 + w * 32 + lane for lane in range(32)]
            want = expected_shuffles(values)
            for lane in range(32):
                t = w * 32 + lane
                got = list(out[(c * threads + t) * k:(c * threads + t + 1) * k])
                assert got == want[lane], f"CTA {c} thread {t}"


def test_syncwarp_orders_shared_memory(lib):
    for seed in range(1, 6):
        out = ints(64, -1)
        assert call(lib.fc_syncwarp, spec(seed=seed), 1, out) == ""
        assert list(out) == [(t // 32) * 32 + (t + 1) % 32 for t in range(64)]
    stale = 0
    for seed in range(1, 11):  # without the __syncwarp some neighbour is read before it wrote
        out = ints(64, -1)
        assert call(lib.fc_syncwarp, spec(seed=seed), 0, out) == ""
        stale += sum(1 for x in out if x == -1)  # the fresh window's 0xff bytes
    assert stale > 0


def test_divergent_collectives_are_reported(lib):
    err = call(lib.fc_divergent, spec(), 0)
    assert "divergent collectives" in err
    assert "shfl.sync.idx" in err and "__syncwarp" in err, err
    err = call(lib.fc_divergent, spec(), 1)
    assert "shfl.sync.idx with member mask 65535: the model runs whole warps only" in err, err
    for seed in (1, 2, 3):  # whichever comes first: the exit or the others' arrival
        err = call(lib.fc_divergent, spec(seed=seed), 2)
        assert ("exited while other threads of its warp wait for it in __syncwarp" in err
                or "__syncwarp needs all 32 threads of the warp; " in err), err


# ---- named barriers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,schedule", [(1, 0), (2, 0), (3, 0), (1, 1), (1, 2), (2, 2), (1, 3), (1, 4)])
def test_named_barriers_with_arrive_only_producers(lib, seed, schedule):
    rounds = 5
    out = ints(2 * 128 * rounds, -1)
    assert call(lib.fc_named_barriers, spec(seed=seed, schedule=schedule), rounds, out) == ""
    for c in range(2):
        for r in range(rounds):
            got = list(out[(c * rounds + r) * 128:(c * rounds + r + 1) * 128])
            assert got == [r * 1000 + 127 - i for i in range(128)], f"CTA {c} round {r}"


# ---- mbarriers ---------------------------------------------------------------------------------------------------
def test_mbarrier_parity_and_tx(lib):
    out = ints(8, -1)
    assert call(lib.fc_mbarrier_parity, spec(), out) == ""
    assert list(out) == [1, 0, 0, 0, 1, 0, 1, 0]


def ring_source(ctas: int, rounds: int):
    return (ctypes.c_int32 * (ctas * rounds * 32))(*range(ctas * rounds * 32))


def ring_expected(ctas: int, rounds: int) -> list[int]:
    return [sum(range((c * rounds + r) * 32, (c * rounds + r + 1) * 32)) for c in range(ctas) for r in range(rounds)]


@pytest.mark.parametrize("seed,schedule,delay",
                         [(1, 0, 64), (2, 0, 1), (3, 0, 500), (4, 1, 64), (5, 2, 64), (6, 2, 500),
                          (7, 0, LAZY), (8, 2, LAZY), (9, 3, 64), (10, 4, 64), (11, 3, LAZY), (12, 4, LAZY)])
def test_mbarrier_ring_with_async_copies(lib, seed, schedule, delay):
    ctas, rounds = 3, 9
    out = ints(ctas * rounds, -1)
    run = spec(seed=seed, schedule=schedule, max_async_delay=delay)
    assert call(lib.fc_mbarrier_ring, run, ctas, rounds, ring_source(ctas, rounds), 1, out) == ""
    assert list(out) == ring_expected(ctas, rounds)
    assert run.stats[4] == ctas * rounds  # one asynchronous copy per tile


@pytest.mark.parametrize("schedule,delay", [(0, 64), (2, 64), (0, LAZY)])
def test_missing_mbarrier_wait_reads_stale_shared_memory(lib, schedule, delay):
    ctas, rounds = 2, 6
    stale_seeds = 0
    for seed in range(1, 9):
        out = ints(ctas * rounds, 0)
        run = spec(seed=seed, schedule=schedule, max_async_delay=delay)
        assert call(lib.fc_mbarrier_ring, run, ctas, rounds, ring_source(ctas, rounds), 0, out) == ""
        stale_seeds += list(out) != ring_expected(ctas, rounds)
    assert stale_seeds >= 4, "the random schedule should expose the missing wait on most seeds"


@pytest.mark.parametrize("kind,words", [
    (0, ["before its mbarrier.init"]),
    (1, ["more arrivals than its init count 1"]),
    (2, ["4 more bytes completed than expect_tx announced"]),
    (3, ["were overwritten since mbarrier.init"]),
    (4, ["parity 2"]),
])
def test_mbarrier_misuse_is_reported(lib, kind, words):
    err = call(lib.fc_mbarrier_misuse, spec(), kind)
    for w in words:
        assert w in err, err
    assert err.startswith("CTA (0, 0, 0) warp 0 lane 0"), err


# ---- whole-launch behaviour ------------------------------------------------------------------------------------
def test_deadlock_report_names_every_wait(lib):
    err = call(lib.fc_deadlock, spec())
    assert err.startswith("deadlock"), err
    assert "warp 3 lanes 0-31: bar.sync 1 (96 of 128 threads arrived)" in err, err
    assert "warp 0 lanes 0: spinning: mbarrier.try_wait.parity 0" in err, err
    assert "warp 0 lanes 1-31: in __syncwarp (31 of its warp's threads arrived)" in err, err


def test_same_seed_same_interleaving_different_seeds_differ(lib):
    def run(seed, schedule=0):
        counter, order = ints(1), ints(4 * 64, -1)
        r = spec(seed=seed, schedule=schedule)
        assert call(lib.fc_ticket_order, r, 4, 64, counter, order) == ""
        assert sorted(order) == list(range(256))
        return list(order), list(r.stats)

    a, b, c = run(11), run(11), run(12)
    assert a == b
    assert a[0] != c[0]
    assert run(5, 1) == run(6, 1)  # round robin ignores the seed


def test_async_tickets_run_now_and_chained_work(lib):
    for seed in (1, 2):
        out = ints(12)
        assert call(lib.fc_async_tickets, spec(seed=seed), out) == ""
        assert list(out) == [1] * 4 + [100, 101, 102, 103] + [200, 201, 202, 203]


def test_random_priority_lets_warps_run_far_ahead(lib):
    """Schedule 2 (kRandomPriority) runs a warp until it waits on another; uniform choice keeps them in step."""
    def mean_run(schedule, seed):
        counter, order = ints(1), ints(4 * 128 * 8, -1)
        r = spec(seed=seed, schedule=schedule)
        assert call(lib.fc_warp_runs, r, 4, 8, counter, order) == ""
        o = list(order)
        assert sorted(o) == sorted(w for w in range(16) for _ in range(32 * 8))
        return len(o) / (1 + sum(a != b for a, b in zip(o, o[1:]))), list(o)

    for seed in (1, 2, 3):
        assert mean_run(0, seed)[0] < 4
        assert mean_run(2, seed)[0] > 64
    assert mean_run(2, 7) == mean_run(2, 7) and mean_run(2, 7) != mean_run(2, 8)


@pytest.mark.parametrize("schedule", [LOWEST_FIRST, HIGHEST_FIRST])
def test_greedy_schedules_run_one_warp_to_its_end(lib, schedule):
    """kLowestFirst / kHighestFirst run the lowest / highest warp with work until it waits: with nothing but
    __syncwarp between steps, each warp finishes before the next starts; the seed does not change the order."""
    def run(seed):
        counter, order = ints(1), ints(4 * 128 * 8, -1)
        r = spec(seed=seed, schedule=schedule)
        assert call(lib.fc_warp_runs, r, 4, 8, counter, order) == ""
        return list(order), list(r.stats)

    warps = range(16) if schedule == LOWEST_FIRST else reversed(range(16))
    assert run(1)[0] == [w for w in warps for _ in range(32 * 8)]
    assert run(1) == run(2)


@pytest.mark.parametrize("schedule", [LOWEST_FIRST, HIGHEST_FIRST])
def test_greedy_schedules_let_spinners_wait_for_their_producer(lib, schedule):
    """A spinning thread runs only when no warp has other work: under kHighestFirst CTA 3 polls a semaphore that
    CTAs 0-2 release in turn (it must not starve them); a semaphore never released is still a deadlock."""
    sem, order, sums = ints(2), ints(4, -1), floats(8)
    assert call(lib.fc_semaphore, spec(schedule=schedule), 4, 1, sem, order, sums) == ""
    assert list(order) == [0, 1, 2, 3] and sem[0] == 4
    sem, order, sums = ints(2), ints(4, -1), floats(8)
    err = call(lib.fc_semaphore, spec(schedule=schedule), 4, 0, sem, order, sums)
    assert err.startswith("deadlock") and "spinning: ld.acquire.gpu polling" in err, err


def test_timeout_stops_a_launch_that_never_ends(lib):
    counter = ints(1)
    start = time.monotonic()
    err = call(lib.fc_forever, spec(timeout=0.5), counter)
    assert err.startswith("timeout"), err
    assert "spinning: busy loop" in err
    assert time.monotonic() - start < 5


def test_watchdog_aborts_a_fiber_that_never_yields(lib):
    script = (f"import ctypes, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "import test_cuda_emu_engine as t; "
              f"lib = ctypes.CDLL({lib._name!r}); flag = t.ints(1); "
              "t.call(lib.fc_endless, t.spec(timeout=0.5), flag)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "no scheduling point for" in result.stderr and "block 1 thread 5" in result.stderr, result.stderr


def test_setmaxnreg_pool(lib):
    assert call(lib.fc_setmaxnreg, spec(registers=168), 0) == ""
    assert call(lib.fc_setmaxnreg, spec(registers=0), 1) == ""  # registers at entry unknown: no pool check
    err = call(lib.fc_setmaxnreg, spec(registers=168), 1)
    # one warpgroup got its 9216, the other waits for 9216 of the 7168 left
    assert err.startswith("deadlock") and "setmaxnreg.inc 240: the pool has 7168 registers free, needs 9216" in err
    err = call(lib.fc_setmaxnreg, spec(registers=168), 2)
    assert "threads of one warpgroup ask for" in err, err


def test_semaphore_release_acquire_between_ctas(lib):
    for seed in (1, 2, 3):
        sem, order, sums = ints(2), ints(4, -1), floats(8)
        assert call(lib.fc_semaphore, spec(seed=seed), 4, 1, sem, order, sums) == ""
        assert list(order) == [0, 1, 2, 3] and sem[0] == 4
        assert list(sums) == [4 * 16 * 1.0, 4 * 16 * 2.0] * 4
    sem, order, sums = ints(2), ints(4, -1), floats(8)
    err = call(lib.fc_semaphore, spec(), 4, 0, sem, order, sums)
    assert err.startswith("deadlock") and "spinning: ld.acquire.gpu polling" in err, err


def test_failures_name_cta_warp_lane_and_shared_memory_checks(lib):
    out = (ctypes.c_uint32 * 16)()
    assert call(lib.fc_smem_and_fail, spec(), 0, out) == "CTA (1, 0, 0) warp 2 lane 5 (thread 69): on purpose"
    assert call(lib.fc_smem_and_fail, spec(), 1, out) == ""
    assert list(out[:3]) == [0xFFFFFFFF] * 3 and list(out[3:6]) == [1024] * 3
    err = call(lib.fc_smem_and_fail, spec(), 2, out)
    assert err.startswith("CTA (2, 0, 0) warp 0 lane 0") and "runs past the 5120 bytes in use" in err, err
    out = (ctypes.c_uint32 * 16)()
    err = call(lib.fc_smem_and_fail, spec(), 3, out)
    assert "not in this CTA's shared memory (it is in CTA (1, 0, 0)'s window)" in err, err


def test_fiber_stacks_of_eight_384_thread_ctas(lib):
    out = floats(8 * 384)
    r = spec()
    start = time.monotonic()
    assert call(lib.fc_stack_depth, r, 8, out) == ""
    elapsed = time.monotonic() - start
    deepest = r.stats[5]
    print(f"8 x 384 threads: deepest fiber stack {deepest} bytes, {r.stats[1]} switches in {elapsed:.2f} s")
    assert 0 < deepest <= FIBER_STACK_BYTES // 8
    assert all(x == x for x in out)  # every thread wrote a number


@pytest.mark.parametrize("seed,schedule", [(1, 0), (2, 0), (1, 1), (1, 2), (2, 2), (1, 3), (1, 4)])
def test_warp_specialized_pipeline(lib, seed, schedule):
    ctas, rounds, tile = 4, 12, 256
    src = (ctypes.c_int32 * (ctas * rounds * tile))(*range(ctas * rounds * tile))
    out = ints(ctas * rounds, -1)
    r = spec(seed=seed, schedule=schedule, registers=168)
    start = time.monotonic()
    assert call(lib.fc_pipeline, r, ctas, rounds, src, out) == ""
    print(f"pipeline {ctas} x 384 threads, {rounds} rounds: {r.stats[1]} switches in {time.monotonic() - start:.2f} s")
    assert list(out) == [sum(range(i * tile, (i + 1) * tile)) for i in range(ctas * rounds)]
    assert r.stats[4] == 2 * ctas * rounds


# ---- grids larger than what is resident --------------------------------------------------------------------------
@pytest.mark.parametrize("ctas,threads,resident,schedule",
                         [(7, 64, 3, 0), (7, 64, 3, 2), (7, 64, 1, 3), (9, 96, 4, HIGHEST_FIRST), (5, 32, 0, 0),
                          (100, 384, 0, 0)])
def test_grid_runs_in_waves(lib, ctas, threads, resident, schedule):
    """At most `resident` CTAs at once (0: as many as fit in 24 K threads, 64 of 384); each later one starts in an
    exited one's slot with fresh shared memory (0xff) and fresh per-CTA state."""
    running, flags, out = ints(2), ints(ctas), (ctypes.c_uint32 * (4 * ctas))()
    r = spec(seed=3, schedule=schedule, resident=resident)
    assert call(lib.fc_waves, r, ctas, threads, 0, running, flags, out) == ""
    rows = [list(out[4 * c:4 * c + 4]) for c in range(ctas)]
    assert all(row[0] == 0xFFFFFFFF and row[1] == 0 and row[3] == 1000 + c for c, row in enumerate(rows)), rows
    limit = min(ctas, resident or 24 * 1024 // threads)
    assert max(row[2] for row in rows) == running[1] <= limit and running[0] == 0
    if schedule == 0:  # uniform choice starts (nearly) every resident CTA before one finishes
        assert running[1] >= limit * 3 // 4, running[1]
    assert r.stats[0] == ctas and list(flags) == [1] * ctas


def test_waiting_for_a_cta_that_has_not_started_is_a_deadlock(lib):
    """CTA c waits for CTA c + 1: fine when all 6 are resident, a deadlock (as on the hardware) with 4 slots."""
    running, flags, out = ints(2), ints(6), (ctypes.c_uint32 * 24)()
    assert call(lib.fc_waves, spec(resident=6), 6, 64, 1, running, flags, out) == ""
    running, flags, out = ints(2), ints(6), (ctypes.c_uint32 * 24)()
    err = call(lib.fc_waves, spec(resident=4), 6, 64, 1, running, flags, out)
    assert err.startswith("deadlock") and "spinning: ld.acquire.gpu polling" in err, err
    assert "2 CTAs of the grid have not started (at most 4 resident at once" in err, err
    err = call(lib.fc_waves, spec(resident=400), 6, 64, 1, running, flags, out)
    assert "max_resident_ctas 400 with 64-thread CTAs: the model holds at most 24576 threads" in err, err
