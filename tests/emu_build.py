"""Builds the CPU models' harness libraries for the tests (tests/test_hip_emulated*.py, test_cuda_emu_*.py,
test_cuda_sm90_emulated.py): one object per source, compiled in parallel, linked into shared libraries that the
tests load with ctypes. A compiler error fails the tests with the compiler's own message."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

STDERR_TAIL = 8000  # characters of compiler output kept in a failure: the first errors of a template cascade


def compiler() -> str | None:
    """$CXX, else g++ / c++ from PATH; None when there is none (the caller skips with that reason)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _run(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building {what} failed:\n{' '.join(exc.cmd)}\n{exc.stderr[-STDERR_TAIL:]}")


def compile_objects(cxx: str, jobs: list[tuple[Path, list[str]]], out: Path, what: str) -> list[Path]:
    """Compiles each (source, flags) into out/<index>_<stem>.o, all in parallel; returns the objects in job order."""
    def compile_one(index: int) -> Path:
        source, flags = jobs[index]
        obj = out / f"{index}_{source.stem}.o"
        _run([cxx, *flags, "-c", str(source), "-o", str(obj)], what)
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 2))) as pool:
        return list(pool.map(compile_one, range(len(jobs))))


def link_library(cxx: str, objects: list[Path], library: Path, what: str) -> Path:
    _run([cxx, "-shared", "-pthread", *map(str, objects), "-o", str(library)], what)
    return library
