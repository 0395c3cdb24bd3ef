"""pytest plugin for scripts/gpu_tests.py: a progress file, a per-test timeout, a CUDA-context check.

Loaded only by the runner (`-p gpu_tests_plugin` with scripts/ on PYTHONPATH), so a plain `pytest tests` is
unchanged. It writes one line per event to --gpu-tests-progress, tab-separated and flushed at once, so the runner
learns which test was in flight when the process hung or died:

    start <nodeid>
    end <nodeid> <outcome> <seconds> <first line of the error for a failure, the reason for a skip>
    hang <nodeid> <seconds>          the watchdog's verdict; all threads' tracebacks go to <progress>.stacks
    poisoned <nodeid> <error>        CUDA is unusable after this test (a sticky error: every later test would fail)

and each failure's full report (traceback, captured output: the seed) to <progress>.failures as it happens, since a
process that dies later never reaches pytest's own summary.

A test marked `@pytest.mark.gpu_timeout(seconds)` (registered in tests/conftest.py) gets that limit instead of
--gpu-tests-timeout: the few that start subprocesses or loop over many steps.

After `hang` and `poisoned` the process exits at once (os._exit): nothing after it could be trusted. A test that
holds the GIL while it hangs (a C call that never returns) starves the watchdog thread; faulthandler's own timer,
which needs no GIL, then dumps the stacks ("Timeout (...)!" in <progress>.stacks) and exits a little later.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

import pytest

EXIT_HANG = 75      # the runner reads the progress file, not this; distinct codes help a person reading `echo $?`
EXIT_POISONED = 76
WATCH_PERIOD_S = 0.2  # how often the watchdog looks: a timeout is acted on at most this late
MESSAGE_CHARS = 300   # an error's first line, cut to keep the progress file and the runner's log compact


def pytest_addoption(parser):
    group = parser.getgroup("gpu_tests", "scripts/gpu_tests.py's runner plugin")
    group.addoption("--gpu-tests-progress", help="progress file: start/end/hang/poisoned lines")
    group.addoption("--gpu-tests-order", help="file of node ids, one a line: run only these, in this order")
    group.addoption("--gpu-tests-timeout", type=float, default=60.0, help="seconds one test may take")
    group.addoption("--gpu-tests-backstop", type=float, default=30.0,
                    help="seconds past the timeout after which faulthandler's timer exits (a GIL-holding hang)")


def pytest_configure(config):
    path = config.getoption("--gpu-tests-progress")
    if path:
        config.pluginmanager.register(Recorder(config, path), "gpu_tests_recorder")


def pytest_collection_modifyitems(session, config, items):
    """Keep only the listed tests, in the listed order (the runner's priority order, and on a restart only the
    tests not yet run); note the tests that carry their own time limit."""
    recorder = config.pluginmanager.get_plugin("gpu_tests_recorder")
    if recorder is not None:
        for item in items:
            marker = item.get_closest_marker("gpu_timeout")
            if marker is not None:
                recorder.limits[item.nodeid] = float(marker.args[0])
    path = config.getoption("--gpu-tests-order")
    if not path:
        return
    with open(path) as f:
        wanted = {line.rstrip("\n"): rank for rank, line in enumerate(f) if line.strip()}
    keep = sorted((item for item in items if item.nodeid in wanted), key=lambda item: wanted[item.nodeid])
    dropped = [item for item in items if item.nodeid not in wanted]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def first_error_line(report) -> str:
    """The assertion or exception line pytest shows after `E`, else the crash message's first line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        return crash.message.strip().splitlines()[0][:MESSAGE_CHARS]
    text = str(report.longrepr or "").strip()
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:MESSAGE_CHARS]
    return (text.splitlines() or ["(no message)"])[-1][:MESSAGE_CHARS]


def cuda_context_error() -> str | None:
    """Why CUDA is unusable, or None. Only where a test already initialised CUDA (torch imported by the tests, not
    here, so test files without torch stay fast): a sticky error (illegal address, a trap) makes every later call
    in this process fail, and synchronize() is where it shows."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 — any error here means the context is gone
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:MESSAGE_CHARS]
    return None


class Recorder:
    def __init__(self, config, path: str):
        self.file = open(path, "a", buffering=1)
        self.stacks = open(path + ".stacks", "a", buffering=1)
        self.failures = open(path + ".failures", "a", buffering=1)
        self.timeout_s = config.getoption("--gpu-tests-timeout")
        self.limits: dict[str, float] = {}  # nodeid -> its gpu_timeout marker's seconds
        self.limit_s = self.timeout_s       # the test in flight's limit
        self.backstop_s = config.getoption("--gpu-tests-backstop")
        self.lock = threading.Lock()
        self.current: str | None = None
        self.started = 0.0
        self.outcome = "passed"
        self.message = ""
        threading.Thread(target=self.watch, name="gpu_tests watchdog", daemon=True).start()

    def write(self, *fields) -> None:
        line = "\t".join(str(f).replace("\t", " ").replace("\n", " ") for f in fields)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())  # the process may be gone an instant later

    def watch(self) -> None:
        while True:
            time.sleep(WATCH_PERIOD_S)
            nodeid, started = self.current, self.started
            if nodeid is None or time.monotonic() - started <= self.limit_s:
                continue
            self.stacks.write(f"==== hang {nodeid} after {self.limit_s:g} s: all threads ====\n")
            faulthandler.dump_traceback(file=self.stacks, all_threads=True)
            self.stacks.flush()
            self.write("hang", nodeid, f"{time.monotonic() - started:.1f}")
            os._exit(EXIT_HANG)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid, location):
        self.outcome, self.message = "passed", ""
        self.write("start", nodeid)
        self.limit_s = self.limits.get(nodeid, self.timeout_s)
        faulthandler.dump_traceback_later(self.limit_s + self.backstop_s, exit=True, file=self.stacks)
        self.started = time.monotonic()
        self.current = nodeid

    def pytest_runtest_logreport(self, report):
        # setup, call, teardown: the first failure decides; a skip in setup (or a call's xfail) makes it skipped.
        if report.failed and self.outcome not in ("failed", "error"):
            self.outcome = "failed" if report.when == "call" else "error"
            self.message = first_error_line(report)
        if report.failed:
            self.failures.write(f"==== {report.nodeid} ({report.when}) ====\n{report.longreprtext}\n")
            for title, text in report.sections:
                self.failures.write(f"---- {title} ----\n{text}\n")
            self.failures.flush()
        elif report.skipped and self.outcome == "passed":
            self.outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
            reason = reason.strip().removeprefix("Skipped: ")
            self.message = reason.splitlines()[0][:MESSAGE_CHARS] if reason else ""

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid, location):
        # The context check runs while the watchdog still watches this test: a kernel it left running (no sync in
        # the test) that never finishes hangs synchronize(), and the hang is this test's.
        error = cuda_context_error()
        self.current = None
        faulthandler.cancel_dump_traceback_later()
        self.write("end", nodeid, self.outcome, f"{time.monotonic() - self.started:.2f}", self.message)
        if error is not None:
            self.write("poisoned", nodeid, error)
            os._exit(EXIT_POISONED)
