"""Which backend serves which device, decided once and explained.

Policy, fixed at import: `FLASHCORE_BACKEND` (cuda_sm90 | hip_gfx942 | reference) if set, otherwise
the hand-written kernel for the device's architecture when the extension holds one and it is enabled
by default, otherwise the reference. The decision per device is made on first use (querying a GPU at
import would initialise CUDA in every process that merely imports flashcore) and cached.

An explicitly requested backend that cannot serve a tensor's device is an error naming why; an
automatic fallback to the reference on a GPU warns once, so no slow path is silent.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _ext, reference

ENV_VAR = "FLASHCORE_BACKEND"
NAMES = ("cuda_sm90", "hip_gfx942", "reference")

# The head dims the hand-written kernels are instantiated for (one template per dim and dtype keeps
# the build inside its 10-minute budget); the reference takes any.
KERNEL_HEAD_DIMS = (64, 96, 128, 192, 256)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
REFERENCE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot serve this device; the message says why."""


class Backend:
    name = "?"
    dtypes: tuple = ()

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can serve `device`, else a sentence saying why not."""
        raise NotImplementedError

    def default_on(self) -> tuple[bool, str]:
        """Whether automatic selection may pick this backend, and why."""
        return True, "default"

    def check(self, q: Tensor, k: Tensor, v: Tensor) -> None:
        """Raise ValueError/TypeError for inputs this backend cannot run, before anything launches."""
        if q.dtype not in self.dtypes:
            raise TypeError(f"q.dtype is {q.dtype}; backend '{self.name}' takes "
                            f"{', '.join(str(t) for t in self.dtypes)}"
                            + ("; FLASHCORE_BACKEND=reference accepts float32" if q.dtype == torch.float32 else ""))

    def fwd(self, *args):
        raise NotImplementedError

    def bwd(self, *args):
        raise NotImplementedError


class ReferenceBackend(Backend):
    name = "reference"
    dtypes = REFERENCE_DTYPES

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        return None

    def fwd(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
            causal, window_left, window_right, softcap, deterministic):
        options = dict(softmax_scale=softmax_scale, window_left=window_left,
                       window_right=0 if causal else window_right, softcap=softcap)
        if cu_seqlens_q is None:
            return reference.forward(q, k, v, **options)
        return reference.forward_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, **options)

    def bwd(self, dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
            max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap, deterministic):
        # The reference is deterministic whatever `deterministic` says: no atomics anywhere.
        options = dict(softmax_scale=softmax_scale, window_left=window_left,
                       window_right=0 if causal else window_right, softcap=softcap)
        if cu_seqlens_q is None:
            return reference.backward(dout, q, k, v, out, lse, dlse, **options)
        return reference.backward_varlen(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, **options)


class KernelBackend(Backend):
    """A hand-written kernel library of the extension: `torch.ops.<library>.fwd/bwd`."""

    dtypes = KERNEL_DTYPES
    library = "?"
    torch_build = "?"  # "cuda" or "hip": which torch builds can run it
    # Off until a GPU run has proven the kernels correct (issues 4 and 6); users can opt in with
    # FLASHCORE_BACKEND meanwhile. Flip per backend when its results are committed.
    proven_on_hardware = False

    def arch_of(self, device: torch.device) -> str:
        raise NotImplementedError

    def arch_ok(self, arch: str) -> bool:
        raise NotImplementedError

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if getattr(torch.version, self.torch_build, None) is None:
            return f"torch {torch.__version__} is not a {self.torch_build.upper()} build"
        if _ext.MODULE is None:
            return f"the flashcore extension is not built or failed to load ({_ext.LOAD_ERROR})"
        if not _ext.has_op(self.library, "fwd"):
            return (f"the extension has no {self.library} attention kernels "
                    f"(built for another vendor, or the kernels are not written yet)")
        if device.type != "cuda":
            return f"tensors on {device} are not on a GPU"
        arch = self.arch_of(device)
        if not self.arch_ok(arch):
            return f"{device} is {arch}; backend '{self.name}' runs on {self.name.split('_')[1]}"
        return None

    def default_on(self) -> tuple[bool, str]:
        if self.proven_on_hardware:
            return True, "default"
        return False, f"not yet proven on hardware: opt in with {ENV_VAR}={self.name}"

    def check(self, q: Tensor, k: Tensor, v: Tensor) -> None:
        super().check(q, k, v)
        if q.shape[-1] not in KERNEL_HEAD_DIMS:
            raise ValueError(f"head_dim is {q.shape[-1]}; backend '{self.name}' has kernels for head_dim in "
                             f"{KERNEL_HEAD_DIMS} (FLASHCORE_BACKEND=reference takes any)")

    def fwd(self, *args):
        return getattr(torch.ops, self.library).fwd(*args)

    def bwd(self, *args):
        if not _ext.has_op(self.library, "bwd"):
            raise BackendUnavailableError(f"backend '{self.name}' has a forward kernel but no backward kernel yet; "
                                          f"use FLASHCORE_BACKEND=reference for training")
        return getattr(torch.ops, self.library).bwd(*args)


class CudaSm90Backend(KernelBackend):
    name, library, torch_build = "cuda_sm90", "flashcore_sm90", "cuda"

    def arch_of(self, device: torch.device) -> str:
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"

    def arch_ok(self, arch: str) -> bool:
        return arch == "sm_90"  # wgmma/setmaxnreg code for sm_90a does not run on sm_100 and later


class HipGfx942Backend(KernelBackend):
    name, library, torch_build = "hip_gfx942", "flashcore_gfx942", "hip"

    def arch_of(self, device: torch.device) -> str:
        return torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]

    def arch_ok(self, arch: str) -> bool:
        return arch == "gfx942"


BACKENDS: dict[str, Backend] = {b.name: b for b in (CudaSm90Backend(), HipGfx942Backend(), ReferenceBackend())}


def _requested() -> Optional[str]:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    if value not in NAMES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a backend; expected one of {', '.join(NAMES)}")
    return value


REQUESTED = _requested()
_CHOICES: dict[tuple[str, Optional[int]], tuple[Backend, str]] = {}
_WARNED: set = set()


def _device_key(device: torch.device) -> tuple[str, Optional[int]]:
    if device.type == "cuda" and device.index is None:
        return ("cuda", torch.cuda.current_device())
    return (device.type, device.index)


def choose(device: torch.device) -> tuple[Backend, str]:
    """The backend that serves `device`, and why. Raises BackendUnavailableError when the requested
    backend cannot serve it."""
    key = _device_key(device)
    if key in _CHOICES:
        return _CHOICES[key]
    dev = torch.device(*key) if key[1] is not None else torch.device(key[0])
    if REQUESTED is not None:
        backend = BACKENDS[REQUESTED]
        reason = backend.unusable_reason(dev)
        if reason is not None:
            raise BackendUnavailableError(f"{ENV_VAR}={REQUESTED} cannot serve {dev}: {reason}")
        choice = (backend, f"requested by {ENV_VAR}")
    else:
        choice = (BACKENDS["reference"], "no GPU: the reference serves CPU tensors")
        if dev.type == "cuda":
            why = []
            for name in ("cuda_sm90", "hip_gfx942"):
                backend = BACKENDS[name]
                reason = backend.unusable_reason(dev)
                if reason is None:
                    on, reason = backend.default_on()
                    if on:
                        choice = (backend, f"{dev} is served by its hand-written kernels")
                        break
                if getattr(torch.version, backend.torch_build, None) is not None:  # only this build's vendor
                    why.append(f"{name}: {reason}")
            else:
                choice = (BACKENDS["reference"], "; ".join(why) or "no kernel backend for this device")
        elif dev.type != "cpu":
            choice = (BACKENDS["reference"], f"no hand-written kernel for {dev.type} devices")
    _CHOICES[key] = choice
    return choice


def for_device(device: torch.device) -> Backend:
    """The serving backend; warns once per device when a GPU falls back to the reference."""
    backend, why = choose(device)
    if backend.name == "reference" and device.type not in ("cpu", "meta") and REQUESTED is None:
        key = _device_key(device)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"flashcore: the PyTorch reference (slow) serves {device}: {why}. "
                          f"Set {ENV_VAR}=reference to silence this.", stacklevel=3)
    return backend
