"""flashcore.bench: FLOP convention by hand, and the CPU smoke path end to end (no GPU needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from flashcore import bench

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL_KEYS = {"schema", "date", "git", "device", "versions", "flashcore", "peak", "settings", "peers",
                  "notes", "cases", "elapsed_s"}
CASE_KEYS = {"impl", "mode", "head_dim", "seqlen", "batch", "heads", "causal", "dtype", "flops", "status",
             "error", "median_ms", "tflops", "frac_of_peak", "check"}


def test_fwd_flops_by_hand():
    # The FA3 paper's D=128, 16k point: batch 1, 16 heads: 4 · 1 · 16 · 16384 · 16384 · 128 = 2^41.
    assert bench.fwd_flops(1, 16, 16384, 16384, 128, causal=False) == 2 ** 41
    # Small numbers: 4 · 2 · 3 · 5 · 7 · 11 = 9240; causal halves it.
    assert bench.fwd_flops(2, 3, 5, 7, 11, causal=False) == 9240
    assert bench.fwd_flops(2, 3, 5, 7, 11, causal=True) == 4620


def test_mode_flops_by_hand():
    assert bench.mode_flops("fwd", 1000.0) == 1000.0
    assert bench.mode_flops("bwd", 1000.0) == 2500.0
    assert bench.mode_flops("fwdbwd", 1000.0) == 3500.0


def test_sweep_shapes_keep_tokens_and_hidden():
    assert bench.Shape.for_sweep(512, 128, bench.TOKENS, bench.HIDDEN) == bench.Shape(32, 512, 16, 128)
    assert bench.Shape.for_sweep(16384, 64, bench.TOKENS, bench.HIDDEN) == bench.Shape(1, 16384, 32, 64)
    assert bench.Shape.for_sweep(8192, 256, bench.TOKENS, bench.HIDDEN) == bench.Shape(2, 8192, 8, 256)


def test_check_slice_bounds_the_reference():
    # 16k: one head of one batch (2^28 scores); 512 with 32 batches × 16 heads: everything (2^27 scores).
    assert bench.check_slice(bench.Shape(1, 16384, 16, 128)) == (1, 1)
    assert bench.check_slice(bench.Shape(32, 512, 16, 128)) == (32, 16)
    b, h = bench.check_slice(bench.Shape(4, 4096, 16, 128))
    assert b * h * 4096 * 4096 <= bench.CHECK_MAX_SCORES and (b, h) == (1, 16)


def test_seqlen_list_parsing():
    assert bench._ints("512, 1k,16K") == (512, 1024, 16384)


def _check_doc(doc: dict, impls: set) -> None:
    assert TOP_LEVEL_KEYS <= set(doc)
    assert doc["schema"] == bench.SCHEMA and doc["device"]["type"] == "cpu"
    assert doc["peak"]["tflops"] > 0
    assert any("mean nothing" in note for note in doc["notes"])
    assert doc["flashcore"]["backend"] == "reference" and isinstance(doc["flashcore"]["info"], dict)
    assert {c["impl"] for c in doc["cases"]} == impls
    assert {c["mode"] for c in doc["cases"]} == {"fwd", "fwdbwd", "bwd"}
    for case in doc["cases"]:
        assert CASE_KEYS <= set(case), case
        assert case["status"] == "ok", case
        assert case["tflops"] > 0 and case["frac_of_peak"] > 0
        assert case["check"]["passed"], case
        assert case["flops"] == bench.mode_flops(case["mode"], bench.fwd_flops(
            case["batch"], case["heads"], case["seqlen"], case["seqlen"], case["head_dim"], case["causal"]))


def test_cpu_smoke_via_module(tmp_path):
    """`python -m flashcore.bench` on the CPU: the default smoke sweep, JSON and PNG written."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "flashcore.bench", "--device", "cpu", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mean nothing" in proc.stdout
    doc = json.loads((tmp_path / "bench.json").read_text())
    _check_doc(doc, {"flashcore", "sdpa_math"})
    sweep = len(bench.CPU_SEQLENS) * len(bench.CPU_HEAD_DIMS) * 2  # × causal on/off
    assert len(doc["cases"]) == sweep * 2 * 3  # × 2 implementations × (fwd, fwdbwd, bwd)
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_failing_peer_is_recorded_not_fatal(tmp_path, monkeypatch, capsys):
    """A peer that raises on a shape, and one that is missing, become 'unsupported' rows with the error."""
    def broken(q, k, v, causal):
        raise RuntimeError("shape not supported by this peer")
    monkeypatch.setitem(bench.PEERS, "broken", lambda: bench.Peer("broken", broken))
    monkeypatch.setitem(bench.PEERS, "missing", lambda: bench.Peer("missing", error="not importable: nope"))
    code = bench.main(["--device", "cpu", "--out", str(tmp_path), "--json-only", "--seqlens", "64",
                       "--head-dims", "32", "--causal", "1", "--peers", "flashcore,broken,missing"])
    assert code == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert not (tmp_path / "bench.png").exists()
    rows = {(c["impl"], c["mode"]): c for c in doc["cases"]}
    assert rows[("flashcore", "fwd")]["status"] == "ok"
    for impl, text in (("broken", "shape not supported"), ("missing", "not importable")):
        for mode in ("fwd", "fwdbwd", "bwd"):
            assert rows[(impl, mode)]["status"] == "unsupported"
            assert text in rows[(impl, mode)]["error"]
    assert doc["peers"]["missing"] == {"available": False, "error": "not importable: nope"}
    assert "UNSUPPORTED" in capsys.readouterr().out


def test_wrong_flashcore_fails_the_run(tmp_path, monkeypatch):
    """A wrong result is caught by the fp32 check and turns the exit status to 1."""
    monkeypatch.setitem(bench.PEERS, "flashcore", lambda: bench.Peer("flashcore", lambda q, k, v, causal: v * 1))
    code = bench.main(["--device", "cpu", "--out", str(tmp_path), "--json-only", "--seqlens", "64",
                       "--head-dims", "32", "--causal", "0", "--mode", "fwd", "--peers", "flashcore"])
    assert code == 1
    (case,) = json.loads((tmp_path / "bench.json").read_text())["cases"]
    assert case["status"] == "ok" and not case["check"]["passed"] and case["check"]["rel_err"]["out"] > 0.1


def test_time_budget_skips_instead_of_running(tmp_path):
    code = bench.main(["--device", "cpu", "--out", str(tmp_path), "--json-only", "--seqlens", "64,128",
                       "--head-dims", "32", "--causal", "0", "--mode", "fwd", "--peers", "sdpa_math",
                       "--time-budget", "0"])
    assert code == 0
    cases = json.loads((tmp_path / "bench.json").read_text())["cases"]
    assert [c["status"] for c in cases] == ["ok", "skipped"]  # the first shape always runs, the budget gates the rest


def test_auto_stem_names_date_device_commit():
    doc = {"date": "2026-11-25T06:00:00+00:00", "device": {"name": "NVIDIA H100 80GB HBM3"},
           "git": {"commit": "0a06287c3a5534c0f8cc96d333298e310cd0736c", "dirty": False}}
    assert bench.default_stem(doc) == "2026-11-25_nvidia-h100-80gb-hbm3_0a06287c3a"


def test_gemm_mode_on_cpu_writes_rows(tmp_path):
    """`--gemm` on CPU: torch.matmul timed, flashcore's sm_90a GEMM recorded as unsupported, exit status 0."""
    code = bench.main(["--gemm", "--device", "cpu", "--out", str(tmp_path), "--gemm-sizes", "64"])
    assert code == 0
    doc = json.loads((tmp_path / "gemm.json").read_text())
    rows = {row["impl"]: row for row in doc["rows"]}
    assert rows["torch.matmul"]["status"] == "ok" and rows["torch.matmul"]["samples"] >= bench.MIN_REPEATS
    assert rows["torch.matmul"]["flops"] == 2 * 64 ** 3
    assert rows["flashcore"]["status"] == "unsupported"


def test_bwd_op_mode_parses_and_needs_a_gpu(capsys):
    """`--bwd-op` (flashcore/bench_bwd.py) imports, parses the sweep options and, without a GPU, says so and exits
    1; the deterministic kernel peer is part of the GPU sweep."""
    args = bench.parse_args(["--bwd-op", "--quick", "--head-dims", "128", "--causal", "1"])
    assert args.bwd_op and args.head_dims == (128,)
    from flashcore import bench_bwd
    assert bench_bwd.IMPLS == ("flashcore", "flashcore_det", "sdpa_flash", "sdpa_cudnn")
    assert "flashcore_sm90_det" in bench.GPU_PEERS and "flashcore_sm90_det" in bench.PEERS
    if not bench.torch.cuda.is_available():
        assert bench.main(["--bwd-op"]) == 1
        assert "needs a CUDA GPU" in capsys.readouterr().out
