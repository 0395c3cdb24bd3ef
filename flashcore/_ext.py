"""Loads the compiled extension (flashcore._C) once, and says what it holds.

Loading it runs the C++ registrations: the public schemas `flashcore::fwd` / `flashcore::bwd`
(csrc/flashcore.cpp) and one kernel library per backend built into it (`flashcore_sm90` for CUDA
builds, `flashcore_gfx942` for HIP builds). A failed load is not fatal: the package falls back to
Python-defined ops and the reference, and `flashcore.info()` reports the error.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

MODULE: Optional[object] = None
LOAD_ERROR: Optional[str] = None

try:
    MODULE = importlib.import_module("flashcore._C")
except ImportError as exc:  # not built (pure-Python install) or built against another torch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_op(namespace: str, name: str) -> bool:
    """True when the extension registered `namespace::name` (e.g. 'flashcore_sm90', 'fwd')."""
    if MODULE is None:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(f"{namespace}::{name}", "")
    except RuntimeError:
        return False
    return True


def build_info() -> dict:
    """How the extension was built, as the extension itself reports it."""
    info: dict = {"loaded": MODULE is not None, "error": LOAD_ERROR}
    if MODULE is not None:
        info["path"] = getattr(MODULE, "__file__", None)
        for lib in ("flashcore_sm90", "flashcore_gfx942"):
            if has_op(lib, "build_info"):
                info[lib] = getattr(torch.ops, lib).build_info()
    return info
