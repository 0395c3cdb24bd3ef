#!/usr/bin/env python3
"""Run the GPU tests so that one hang or crash cannot hide the others; a compact log on stdout.

    python scripts/gpu_tests.py [TARGET ...] [-k EXPR] [--all] [--timeout S] [--time-cap S] [--list]

TARGETs are what pytest takes (files, node ids); by default the tests that use CUDA (GPU_TARGETS), run from the
repository root; --all runs the whole suite. Kernels that have never run may deadlock (an mbarrier wait that never
completes) or fault (an illegal address leaves the CUDA context unusable: every later test in the process fails).
So the runner

* collects the test ids and orders them by PRIORITY (the smallest kernels first: their verdict explains the rest),
* runs them in a pytest subprocess with scripts/gpu_tests_plugin.py, which records each test's start and end in a
  progress file and ends the process on a test that runs past --timeout (stacks dumped) or leaves CUDA unusable,
* on a hang, a crash (a signal: the last test started and not ended is the culprit) or a poisoned context,
  restarts pytest on the tests not yet run, without the culprit, until all ran or --time-cap is reached;
  after MAX_CULPRITS_PER_FUNCTION culprits among one test function's parameters the rest of it is abandoned,
  and after MAX_CULPRITS_PER_GROUP the rest of its PRIORITY group (a kernel that deadlocks does so for every
  shape, and each costs a timeout),
* ends the log with a summary whose last line is one line (scripts/gpu_check.sh puts it into summary.txt).

The log stays under --log-cap bytes: full reports of failures until the cap, then only their first lines.
Exit status: 0 all ran and none failed, 1 failures (hung, crashed, poisoned included), 2 collection failed,
124 the time cap or SIGTERM stopped it with tests not reached.
Needs only the standard library and pytest (the GPU machine has no pip).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(__file__).resolve().parent  # scripts/gpu_tests_plugin.py, imported by pytest via -p

# The tests that use CUDA when a GPU is present; the other files test CPU models, the build and the host code (CI
# runs them). test_nccl_gpus needs two GPUs and skips itself on one.
GPU_TARGETS = ("tests/test_cuda_sm90.py", "tests/test_distributed.py::test_nccl_gpus")
# Run order by test-function name, first match wins; unmatched tests run last, in collection order. The smallest
# kernels first: if the wgmma probe or the GEMM fails, the attention kernels' failures are its consequence.
PRIORITY = (
    ("wgmma_probe", r"^test_wgmma_probe"),
    ("bwd_preprocess", r"^test_bwd_preprocess"),
    ("gemm", r"^test_gemm"),
    ("fwd", r"^test_fwd"),
    ("bwd", r"^test_bwd_(?!training_loop)"),
    ("training loop", r"training_loop"),
)

TIMEOUT_S = 30.0            # per test: the largest GPU test (the training loop) runs in seconds; each hang costs it
BACKSTOP_S = 15.0           # faulthandler's GIL-free exit comes this long after the timeout (the watchdog's is first)
DRIVER_GRACE_S = 15.0       # and if even that did not end the process, the runner kills it this much later
MAX_CULPRITS_PER_FUNCTION = 2  # two hangs or crashes among one function's parameters: it is the kernel, not a shape
MAX_CULPRITS_PER_GROUP = 6  # and six in one PRIORITY group (fwd, bwd, ...): a kernel that hangs everywhere costs
                            # six timeouts, not one per test function
KILL_WAIT_S = 30.0          # a killed process stuck in the driver (uninterruptible) for longer: the GPU is wedged
COLLECT_CAP_S = 300.0       # collection imports torch and loads the extension: seconds, unless it hangs
POLL_S = 0.2                # how often the progress file is read
MIN_RUN_S = 5.0             # a restart (pytest, torch import, collection) needs seconds; with less left, stop
LOG_CAP = 400_000           # bytes of log: it comes back through a tool with size limits
SUMMARY_RESERVE = 80_000    # of which kept for the summary at the end
EVENT_LINE_CHARS = 400      # one event (a failure's first line, a hang) per line, cut to this
FAILURE_REPORT_CHARS = 12_000  # one failure's full report: the traceback and the captured seed fit
CULPRIT_DETAIL_CHARS = 16_000  # a hang's stacks or a crash's last output
CRASH_TAIL_LINES = 60       # of a crashed run's output: pytest's faulthandler prints the fatal stack there
SUMMARY_LIST = 100          # failed / not-reached lines in the summary, then "... and N more"
SKIP_REASONS = 5            # the most common skip reasons in the summary: all skipped usually means one cause
PROGRESS_EVERY = 50         # a progress line after this many tests: the log shows the run is alive
# Frames of pytest's and the thread machinery's own code in a dumped stack: the same ~30 lines under every test.
FRAMEWORK_FRAME = re.compile(r'File ".*(/_pytest/|/pluggy/|<frozen runpy>|/pytest/__main__\.py|/threading\.py")')
EXIT_FAILED, EXIT_COLLECTION, EXIT_CUT_OFF = 1, 2, 124  # 124: what `timeout` returns, gpu_check.sh's "timed out"


@dataclass
class Result:
    status: str          # passed failed error skipped xfailed xpassed | hung crashed poisoned
    seconds: float = 0.0
    message: str = ""    # first error line, or why it hung / crashed


class Log:
    """stdout, flushed per line (a runner killed from outside still leaves its log), bounded in bytes."""

    def __init__(self, cap: int):
        self.cap, self.used = cap, 0

    def left(self) -> int:
        return self.cap - self.used

    def write(self, text: str, reserve: int = SUMMARY_RESERVE, force: bool = False) -> bool:
        data = text if text.endswith("\n") else text + "\n"
        size = len(data.encode("utf-8", "replace"))
        if not force and self.used + size > self.cap - min(reserve, self.cap // 4):
            return False
        sys.stdout.write(data)
        sys.stdout.flush()
        self.used += size
        return True

    def force(self, text: str) -> None:
        """The summary: written whatever the cap (it is bounded by SUMMARY_LIST lines)."""
        self.write(text, force=True)

    def event(self, text: str) -> None:
        self.write(text.replace("\n", " ")[:EVENT_LINE_CHARS])


def function_of(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def rank(nodeid: str) -> int:
    name = function_of(nodeid).rsplit("::", 1)[-1]
    return next((i for i, (_, pattern) in enumerate(PRIORITY) if re.search(pattern, name)), len(PRIORITY))


def group_of(nodeid: str) -> str:
    """The PRIORITY group's name ("group fwd"), or "group rest"."""
    i = rank(nodeid)
    return f"group {PRIORITY[i][0] if i < len(PRIORITY) else 'rest'}"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters cut)\n"


def compact_stacks(text: str) -> str:
    """A faulthandler dump without pytest's frames: what is left is the test's own call chain."""
    out, dropped = [], 0
    for line in text.splitlines():
        if FRAMEWORK_FRAME.search(line):
            dropped += 1
            continue
        if dropped:
            out.append(f"  ({dropped} pytest / threading frames)")
            dropped = 0
        out.append(line)
    if dropped:
        out.append(f"  ({dropped} pytest / threading frames)")
    return "\n".join(out)


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "killed by the runner"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


class Runner:
    def __init__(self, args, workdir: Path, log: Log):
        self.args, self.workdir, self.log = args, workdir, log
        self.results: dict[str, Result] = {}
        self.abandoned: dict[str, str] = {}   # nodeid -> why
        self.culprit_count: Counter = Counter()
        self.details: list[str] = []          # failure reports, printed at the end as the cap allows
        self.runs = 0
        self.stop_requested = False
        self.cut_off = False
        self.start = time.monotonic()
        self.deadline = self.start + args.time_cap if args.time_cap > 0 else None

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def pytest_cmd(self) -> list[str]:
        cmd = [self.args.python, "-m", "pytest", "-p", "no:cacheprovider"]
        if self.args.k:
            cmd += ["-k", self.args.k]
        return cmd

    def collect(self) -> list[str] | None:
        cmd = self.pytest_cmd() + ["--collect-only", "-q", *self.args.targets]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=min(COLLECT_CAP_S, max(self.time_left(), 1.0)))
        except subprocess.TimeoutExpired as e:
            self.log.write(f"collection timed out after {e.timeout:.0f} s:\n{clip(str(e.stdout or ''), 8000)}")
            return None
        ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
        if proc.returncode != 0 or not ids:
            self.log.write(f"collection failed ({describe_exit(proc.returncode)}, {len(ids)} ids):\n"
                           f"{clip(proc.stdout + proc.stderr, CULPRIT_DETAIL_CHARS)}")
            return None
        return ids

    def run_once(self, todo: list[str]) -> tuple[str | None, str, list[str]]:
        """One pytest process over `todo`, in order. Returns (culprit, its status, ids it finished)."""
        self.runs += 1
        stem = self.workdir / f"run{self.runs}"
        order, progress, output = (Path(f"{stem}.{ext}") for ext in ("order", "progress", "out"))
        order.write_text("".join(t + "\n" for t in todo))
        progress.touch()
        cmd = self.pytest_cmd() + [
            # option=value: pytest takes a separate value that names a file for a test path when it picks rootdir
            "-q", "-p", "gpu_tests_plugin", f"--gpu-tests-order={order}", f"--gpu-tests-progress={progress}",
            f"--gpu-tests-timeout={self.args.timeout}", f"--gpu-tests-backstop={self.args.backstop}",
            *self.args.targets]
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")])))
        with open(output, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.log.event(f"-- run {self.runs}: {len(todo)} tests, pid {proc.pid}, "
                       f"{time.monotonic() - self.start:.0f} s into the runner")
        in_flight, since, hang, poisoned, killed = None, 0.0, None, None, None
        done: list[str] = []
        position, pending = 0, ""
        while True:
            rc = proc.poll()
            with open(progress, "rb") as f:
                f.seek(position)
                chunk = f.read()
            position += len(chunk)
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                kind, *fields = line.split("\t")
                if kind == "start":
                    in_flight, since = fields[0], time.monotonic()
                elif kind == "end":
                    nodeid, outcome, seconds, message = (fields + [""] * 4)[:4]
                    self.results[nodeid] = Result(outcome, float(seconds or 0), message)
                    done.append(nodeid)
                    in_flight = None
                    self.report_end(nodeid)
                elif kind == "hang":
                    hang = fields[0]
                    since = time.monotonic() - float(fields[1])  # the plugin's clock: ours saw the start late
                elif kind == "poisoned":
                    poisoned = (fields[0], fields[1] if len(fields) > 1 else "")
            if rc is not None:
                break
            now = time.monotonic()
            if self.stop_requested or (self.deadline is not None and now >= self.deadline):
                killed, self.cut_off = "time", True
            elif in_flight and now - since > self.args.timeout + self.args.backstop + DRIVER_GRACE_S:
                killed = "hang"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=KILL_WAIT_S)
                except subprocess.TimeoutExpired:
                    self.log.event(f"-- pytest (pid {proc.pid}) survived SIGKILL for {KILL_WAIT_S:g} s (stuck in the "
                                   "driver?); no further runs")
                    self.stop_requested = True
                rc = None
                break
            time.sleep(POLL_S)
        return self.judge(rc, in_flight, since, hang, poisoned, killed, done, stem)

    def judge(self, rc, in_flight, since, hang, poisoned, killed, done, stem):
        """Name the culprit of a run that ended early, and log what tells why."""
        stacks = Path(f"{stem}.progress.stacks")
        stacks_text = stacks.read_text(errors="replace") if stacks.exists() else ""
        if poisoned is not None:
            nodeid, error = poisoned
            before = self.results.get(nodeid, Result("passed"))
            message = error if before.status == "passed" else f"{before.message} | then: {error}"
            self.results[nodeid] = Result("poisoned", before.seconds, message)
            self.log.event(f"POISONED {nodeid}: CUDA unusable after it: {error}")
            # A trap's device printf (the watchdog build's report) lands here or in the test's captured stdout.
            self.log.write("its run's output's end:\n" + clip(self.tail(stem), CULPRIT_DETAIL_CHARS))
            return nodeid, "poisoned", done
        if in_flight is None:
            if rc not in (0, 1):
                self.log.write(f"-- run {self.runs} ended with {describe_exit(rc)} between tests; its output's end:\n"
                               + clip(self.tail(stem), CULPRIT_DETAIL_CHARS), reserve=SUMMARY_RESERVE)
            return None, "", done
        seconds = time.monotonic() - since
        if killed == "time":
            self.log.event(f"CUT OFF {in_flight} after {seconds:.1f} s: the time cap was reached")
            return None, "", done
        if hang is not None or killed == "hang" or "Timeout (" in stacks_text:
            how = {None: "the GIL-free backstop (faulthandler) ended it", "hang": "the runner killed it"}.get(killed)
            how = "the watchdog ended it" if hang is not None else how
            self.results[in_flight] = Result("hung", seconds, f"ran past {self.args.timeout:g} s; {how}")
            self.log.event(f"HUNG {in_flight} after {seconds:.1f} s ({how}); all threads' stacks:")
            self.log.write(clip(compact_stacks(stacks_text), CULPRIT_DETAIL_CHARS) or "(no stacks written)")
            return in_flight, "hung", done
        why = describe_exit(rc)
        self.results[in_flight] = Result("crashed", seconds, why)
        self.log.event(f"CRASHED {in_flight} after {seconds:.1f} s: the process ended ({why}); its output's end:")
        self.log.write(clip(self.tail(stem), CULPRIT_DETAIL_CHARS))
        return in_flight, "crashed", done

    def tail(self, stem: Path) -> str:
        text = compact_stacks(Path(f"{stem}.out").read_text(errors="replace"))
        return "\n".join(text.splitlines()[-CRASH_TAIL_LINES:])

    def report_end(self, nodeid: str) -> None:
        r = self.results[nodeid]
        if r.status in ("failed", "error", "xpassed"):
            self.log.event(f"{r.status.upper()} {nodeid} ({r.seconds:.1f} s): {r.message}")
        finished = len(self.results)
        if finished % PROGRESS_EVERY == 0:
            counts = Counter(x.status for x in self.results.values())
            self.log.event(f"   {finished} done in {time.monotonic() - self.start:.0f} s: "
                           + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

    def run(self, ids: list[str]) -> None:
        todo = list(ids)
        while todo and not self.stop_requested:
            if self.time_left() < MIN_RUN_S:
                self.cut_off = True
                self.log.event(f"-- time cap: {self.time_left():.0f} s left, {len(todo)} tests not started")
                break
            culprit, status, done = self.run_once(todo)
            self.collect_failures()
            finished = set(done) | ({culprit} if culprit else set())
            todo = [t for t in todo if t not in finished]
            if culprit:
                self.abandon_after(culprit, status, todo)
                todo = [t for t in todo if t not in self.abandoned]
            elif todo and not self.cut_off:
                self.log.event(f"-- run {self.runs} ended with {len(todo)} tests not run and no test to blame; "
                               "stopping (see the run's output above)")
                break

    def abandon_after(self, culprit: str, status: str, todo: list[str]) -> None:
        """Drop the rest of the culprit's function, or of its priority group, once it had its limit of culprits."""
        for key, limit in ((function_of(culprit), self.args.max_culprits_per_function),
                           (group_of(culprit), self.args.max_culprits_per_group)):
            self.culprit_count[key] += 1
            if limit <= 0 or self.culprit_count[key] < limit:
                continue
            dropped = [t for t in todo if key in (function_of(t), group_of(t)) and t not in self.abandoned]
            for t in dropped:
                self.abandoned[t] = key
            if dropped:
                self.log.event(f"ABANDONED {len(dropped)} more of {key}: {self.culprit_count[key]} of its tests hung, "
                               f"crashed or poisoned CUDA (last: {status})")

    def collect_failures(self) -> None:
        path = self.workdir / f"run{self.runs}.progress.failures"
        if path.exists():
            for block in re.split(r"(?m)^(?===== )", path.read_text(errors="replace")):
                if block.strip():
                    self.details.append(clip(block, FAILURE_REPORT_CHARS))

    def summary(self, ids: list[str]) -> str:
        elapsed = time.monotonic() - self.start
        counts = Counter(r.status for r in self.results.values())
        reached = set(self.results) | set(self.abandoned)
        not_reached = [t for t in ids if t not in reached]
        lines = ["==== summary ====",
                 f"targets: {' '.join(self.args.targets)}{' -k ' + self.args.k if self.args.k else ''}; "
                 f"per-test timeout {self.args.timeout:g} s; pytest runs: {self.runs}; {elapsed:.0f} s"]
        for status in ("hung", "crashed", "poisoned"):
            for t in ids:
                r = self.results.get(t)
                if r and r.status == status:
                    lines.append(f"{status}: {t} ({r.seconds:.1f} s): {r.message}")
        failed = [t for t in ids if t in self.results and self.results[t].status in ("failed", "error", "xpassed")]
        for t in failed[:SUMMARY_LIST]:
            r = self.results[t]
            lines.append(f"{r.status}: {t}: {r.message}"[:EVENT_LINE_CHARS])
        if len(failed) > SUMMARY_LIST:
            lines.append(f"... and {len(failed) - SUMMARY_LIST} more failed")
        for key, n in Counter(self.abandoned.values()).items():
            lines.append(f"abandoned: {n} of {key} after {self.culprit_count[key]} hung/crashed/poisoned")
        by_function = Counter(function_of(t) for t in not_reached)
        for function, n in list(by_function.items())[:SUMMARY_LIST]:
            lines.append(f"not reached: {n} of {function}")
        skips = Counter(r.message for r in self.results.values() if r.status in ("skipped", "xfailed"))
        for reason, n in skips.most_common(SKIP_REASONS):
            lines.append(f"skipped: {n} because {reason}"[:EVENT_LINE_CHARS])
        slow = sorted(self.results.items(), key=lambda kv: -kv[1].seconds)[:5]
        if slow:
            lines.append("slowest: " + ", ".join(f"{t} {r.seconds:.1f} s" for t, r in slow))
        failed_n = counts["failed"] + counts["error"] + counts["xpassed"]
        lines.append(f"gpu_tests: {counts['passed']} passed, {failed_n} failed, {counts['skipped'] + counts['xfailed']} skipped, "
                     f"{counts['hung']} hung, {counts['crashed']} crashed, {counts['poisoned']} poisoned, "
                     f"{len(self.abandoned)} abandoned, {len(not_reached)} not reached of {len(ids)} "
                     f"in {elapsed:.0f} s{' (cut off)' if self.cut_off else ''}")
        return "\n".join(lines)

    def exit_code(self, ids: list[str]) -> int:
        bad = {"failed", "error", "xpassed", "hung", "crashed", "poisoned"}
        if any(r.status in bad for r in self.results.values()) or self.abandoned:
            return EXIT_FAILED
        if len(self.results) < len(ids):
            return EXIT_CUT_OFF if self.cut_off else EXIT_FAILED
        return 0


def parse_args(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help=f"pytest files or node ids (default: {' '.join(GPU_TARGETS)}, "
                                              "from the repository root)")
    p.add_argument("--tests", nargs="+", default=[], metavar="TARGET", help="the same as TARGETs")
    p.add_argument("-k", help="pytest -k expression, to rerun a subset")
    p.add_argument("--all", action="store_true", help="the whole suite (tests/), CPU-model tests included")
    p.add_argument("--timeout", type=float, default=float(env("FLASHCORE_GPU_TESTS_TIMEOUT_S", TIMEOUT_S)),
                   help="seconds one test may take (env FLASHCORE_GPU_TESTS_TIMEOUT_S; default %(default)s)")
    p.add_argument("--time-cap", type=float, default=float(env("FLASHCORE_GPU_TESTS_CAP_S", 0)),
                   help="seconds for everything, 0 for none (env FLASHCORE_GPU_TESTS_CAP_S)")
    p.add_argument("--backstop", type=float, default=BACKSTOP_S,
                   help="seconds past --timeout for faulthandler's exit, when a hang holds the GIL")
    p.add_argument("--max-culprits-per-function", type=int, default=MAX_CULPRITS_PER_FUNCTION,
                   help="abandon a test function's other parameters after this many hung/crashed ones (0: never)")
    p.add_argument("--max-culprits-per-group", type=int, default=MAX_CULPRITS_PER_GROUP,
                   help="abandon the rest of a priority group (fwd, bwd, ...) after this many (0: never)")
    p.add_argument("--log-cap", type=int, default=LOG_CAP, help="bytes of log (default %(default)s)")
    p.add_argument("--list", action="store_true", help="print the test ids in run order and exit")
    p.add_argument("--workdir", help="keep the per-run progress files and pytest output here")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    args = p.parse_args(argv)
    args.targets = args.targets + args.tests
    if args.all:
        args.targets = args.targets or ["tests"]
    if not args.targets:
        os.chdir(ROOT)
        args.targets = list(GPU_TARGETS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_tests."))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run_all(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run_all(args, workdir: Path) -> int:
    log = Log(args.log_cap)
    runner = Runner(args, workdir, log)

    def on_term(signum, frame):  # `timeout` sends SIGTERM: finish with a summary instead of dying mid-line
        runner.stop_requested = True
    signal.signal(signal.SIGTERM, on_term)

    log.write(f"gpu_tests: collecting {' '.join(args.targets)}{' -k ' + args.k if args.k else ''} "
              f"in {os.getcwd()}")
    ids = runner.collect()
    if ids is None:
        log.force("gpu_tests: collection failed, no test ran")
        return EXIT_COLLECTION
    ids = sorted(ids, key=rank)  # stable: collection order within a priority
    if args.list:
        print("\n".join(ids))
        return 0
    groups = Counter(group_of(t).removeprefix("group ") for t in ids)
    log.write(f"collected {len(ids)} in {time.monotonic() - runner.start:.0f} s; order: "
              + ", ".join(f"{name} {n}" for name, n in groups.items()))
    runner.run(ids)
    if runner.details:
        log.write(f"==== failure reports ({len(runner.details)}) ====")
        for i, block in enumerate(runner.details):
            if not log.write(block):
                log.write(f"... {len(runner.details) - i} more reports cut (log cap {args.log_cap} bytes)",
                          reserve=SUMMARY_RESERVE // 2)
                break
    log.force(runner.summary(ids))
    return runner.exit_code(ids)


if __name__ == "__main__":
    sys.exit(main())
