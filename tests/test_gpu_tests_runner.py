"""scripts/gpu_tests.py, the GPU machine's test runner, on fake test files (no GPU, no torch in the runs): each
outcome reported as what it is, and the tests after a hang, a crash or a poisoned CUDA context still run."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "scripts" / "gpu_tests.py"
TIMEOUT = "1.5"   # per-test timeout for the fakes: a hang costs this, a pass takes milliseconds
BACKSTOP = "1"

# One of each: pass, fail, hang, crash (abort, os._exit), skip, poisoned CUDA, and passes after each of them.
# test_poison stands in a fake torch whose synchronize() raises, as after an illegal address on a GPU.
FAKES = '''
import os, sys, time, types
import pytest

def test_pass():
    pass

def test_fail():
    assert 1 == 2, "one is not two"

def test_hang():
    time.sleep(60)

def test_after_hang():
    pass

def test_abort():
    os.abort()

def test_after_abort():
    pass

def test_exit():
    os._exit(3)

def test_skip():
    pytest.skip("not here")

def test_poison():
    def synchronize():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, synchronize=synchronize)
    sys.modules["torch"] = types.SimpleNamespace(cuda=cuda)
    assert False, "wrong numbers"

def test_left_a_hung_kernel():
    # passes, but the fake synchronize() never returns: the hang is found after the test, and blamed on it
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                 synchronize=lambda: time.sleep(60))
    sys.modules["torch"] = types.SimpleNamespace(cuda=cuda)

def test_last():
    pass

def test_gemm_runs_first():
    pass
'''


def run(tmp_path, files: dict, *args, timeout=60):
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    proc = subprocess.run([sys.executable, str(RUNNER), "--timeout", TIMEOUT, "--backstop", BACKSTOP, *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    return proc


def summary_lines(stdout: str) -> list:
    return stdout[stdout.index("==== summary ===="):].splitlines()


def test_each_outcome_is_reported_and_the_tests_after_a_hang_or_crash_still_run(tmp_path):
    proc = run(tmp_path, {"test_fakes.py": FAKES}, "test_fakes.py", "--workdir", str(tmp_path / "work"))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    summary = summary_lines(out)
    assert summary[-1].startswith("gpu_tests: 5 passed, 1 failed, 1 skipped, 2 hung, 2 crashed, 1 poisoned, "
                                  "0 abandoned, 0 not reached of 12 in "), summary[-1]
    assert "hung: test_fakes.py::test_hang" in out and "the watchdog ended it" in out
    assert any(line.startswith("hung: test_fakes.py::test_left_a_hung_kernel") for line in summary)
    assert any(line.startswith("crashed: test_fakes.py::test_abort") and "SIGABRT" in line for line in summary)
    assert any(line.startswith("crashed: test_fakes.py::test_exit") and "exit code 3" in line for line in summary)
    assert any(line.startswith("poisoned: test_fakes.py::test_poison") and "illegal memory access" in line
               and "wrong numbers" in line for line in summary)
    assert "failed: test_fakes.py::test_fail: AssertionError: one is not two" in summary
    assert "skipped: 1 because not here" in summary
    # The hang's stacks name the test's line; the abort's output has the fatal error.
    assert re.search(r'test_fakes.py", line \d+ in test_hang', out)
    assert "Fatal Python error: Aborted" in out
    # The full report of the failure, with the code line, comes before the summary.
    assert re.search(r"(?m)^E +AssertionError: one is not two", out[:out.index("==== summary ====")])
    # One run, then a restart after each hang, crash and poisoning; the GEMM test ran first.
    work = tmp_path / "work"
    assert sorted(p.name for p in work.glob("run*.order")) == [f"run{i}.order" for i in range(1, 7)]
    assert (work / "run1.order").read_text().splitlines()[0] == "test_fakes.py::test_gemm_runs_first"
    progress = (work / "run1.progress").read_text().splitlines()
    assert progress[:2] == ["start\ttest_fakes.py::test_gemm_runs_first",
                            progress[1]] and progress[1].startswith("end\ttest_fakes.py::test_gemm_runs_first\tpassed\t")
    assert progress[-1].startswith("hang\ttest_fakes.py::test_hang\t")


def test_a_hang_holding_the_gil_is_ended_by_the_backstop(tmp_path):
    # A regex that backtracks for ages never releases the GIL, so the watchdog thread never runs: faulthandler's
    # C-level timer has to end it, and the test after it still runs.
    fakes = '''
        import re
        def test_gil():
            re.match(r"(a+)+$", "a" * 40 + "b")
        def test_after():
            pass
    '''
    proc = run(tmp_path, {"test_gil.py": fakes}, "test_gil.py")
    assert proc.returncode == 1
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("gpu_tests: 1 passed, 0 failed, 0 skipped, 1 hung, 0 crashed"), last
    assert "hung: test_gil.py::test_gil" in proc.stdout and "backstop" in proc.stdout
    assert re.search(r'test_gil.py", line \d+ in test_gil', proc.stdout)


def test_a_gpu_timeout_marker_raises_one_tests_limit(tmp_path):
    # Both sleep past the default limit (1.5 s); only the unmarked one is a hang.
    fakes = '''
        import time, pytest
        @pytest.mark.gpu_timeout(8)
        def test_slow_but_marked():
            time.sleep(2.5)
        def test_slow_unmarked():
            time.sleep(2.5)
    '''
    proc = run(tmp_path, {"test_slow.py": fakes}, "test_slow.py")
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("gpu_tests: 1 passed, 0 failed, 0 skipped, 1 hung, 0 crashed"), proc.stdout
    assert "hung: test_slow.py::test_slow_unmarked" in proc.stdout


def test_priority_order_and_node_id_pass_through(tmp_path):
    names = ["test_zeta", "test_bwd_training_loop_x", "test_bwd_dense", "test_fwd_dense", "test_gemm_x",
             "test_bwd_preprocess_x", "test_wgmma_probe_x"]
    fakes = "".join(f"def {name}():\n    pass\n" for name in names)
    proc = run(tmp_path, {"test_order.py": fakes}, "test_order.py", "--list")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line]
    assert order == ["test_wgmma_probe_x", "test_bwd_preprocess_x", "test_gemm_x", "test_fwd_dense",
                     "test_bwd_dense", "test_bwd_training_loop_x", "test_zeta"]
    proc = run(tmp_path, {}, "test_order.py::test_zeta", "--tests", "test_order.py::test_gemm_x", "-k", "not gemm")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1].startswith("gpu_tests: 1 passed, 0 failed, 0 skipped, 0 hung, 0 crashed, "
                                                   "0 poisoned, 0 abandoned, 0 not reached of 1 in ")


def test_a_function_that_keeps_crashing_is_abandoned(tmp_path):
    fakes = '''
        import os, pytest
        @pytest.mark.parametrize("n", range(5))
        def test_crash(n):
            os._exit(1)
        def test_other():
            pass
    '''
    proc = run(tmp_path, {"test_crash.py": fakes}, "test_crash.py", "--max-culprits-per-function", "2")
    summary = summary_lines(proc.stdout)
    assert summary[-1].startswith("gpu_tests: 1 passed, 0 failed, 0 skipped, 0 hung, 2 crashed, 0 poisoned, "
                                  "3 abandoned, 0 not reached of 6"), summary[-1]
    assert "abandoned: 3 of test_crash.py::test_crash after 2 hung/crashed/poisoned" in summary
    assert proc.returncode == 1


def test_a_group_that_keeps_crashing_is_abandoned(tmp_path):
    # Three fwd functions crash on every parameter: after 3 culprits in group fwd (one per function is allowed
    # twice, so the group limit is what stops it) the rest of the group is dropped; test_gemm and test_zeta run.
    fakes = "import os, pytest\n" + "".join(
        f"@pytest.mark.parametrize('n', range(3))\ndef test_fwd_{name}(n):\n    os._exit(1)\n" for name in "abc")
    fakes += "def test_gemm():\n    pass\ndef test_zeta():\n    pass\n"
    proc = run(tmp_path, {"test_group.py": fakes}, "test_group.py", "--max-culprits-per-group", "3")
    summary = summary_lines(proc.stdout)
    assert summary[-1].startswith("gpu_tests: 2 passed, 0 failed, 0 skipped, 0 hung, 3 crashed, 0 poisoned, "
                                  "6 abandoned, 0 not reached of 11"), summary[-1]
    assert "abandoned: 1 of test_group.py::test_fwd_a after 2 hung/crashed/poisoned" in summary
    assert "abandoned: 5 of group fwd after 3 hung/crashed/poisoned" in summary


def test_the_time_cap_and_sigterm_end_with_a_summary(tmp_path):
    fakes = "import time\n" + "".join(f"def test_slow_{i}():\n    time.sleep(0.4)\n" for i in range(30))
    proc = run(tmp_path, {"test_slow.py": fakes}, "test_slow.py", "--time-cap", "2.5")
    last = proc.stdout.splitlines()[-1]
    assert proc.returncode == 124, proc.stdout
    assert last.endswith("(cut off)") and " 0 hung" in last and "not reached of 30" in last
    assert "not reached: " in proc.stdout and "test_slow.py::test_slow_29" in proc.stdout
    # SIGTERM (what `timeout` sends): the runner stops its pytest and still writes the summary.
    runner = subprocess.Popen([sys.executable, str(RUNNER), "test_slow.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                              text=True)
    time.sleep(2.0)
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=20)
    assert runner.returncode == 124, out
    assert out.splitlines()[-1].endswith("(cut off)") and "not reached of 30" in out.splitlines()[-1]


def test_the_log_stays_under_its_cap(tmp_path):
    fakes = "".join(f"def test_big_{i}():\n    assert False, 'x' * 3000\n" for i in range(40))
    cap = 20_000
    proc = run(tmp_path, {"test_big.py": fakes}, "test_big.py", "--log-cap", str(cap))
    out = proc.stdout
    summary = "\n".join(summary_lines(out))
    assert len(out.encode()) - len(summary.encode()) <= cap
    assert "more reports cut" in out
    assert out.splitlines()[-1].startswith("gpu_tests: 0 passed, 40 failed")


def test_a_collection_error_is_reported(tmp_path):
    proc = run(tmp_path, {"test_broken.py": "def test_x(:\n    pass\n"}, "test_broken.py")
    assert proc.returncode == 2
    assert "SyntaxError" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "gpu_tests: collection failed, no test ran"


def test_gpu_check_runs_the_runner_and_parses():
    script = REPO / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "scripts/gpu_tests.py" in text and "pytest -q -rfEs tests" not in text


@pytest.mark.skipif(os.name != "posix", reason="the runner uses process groups")
def test_the_plugin_stays_out_of_a_plain_pytest_run(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_x():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--gpu-tests-timeout=1",
                           "test_plain.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and "unrecognized arguments: --gpu-tests-timeout" in proc.stderr
