"""The two custom ops, `flashcore::fwd` and `flashcore::bwd`: schema, router, fake, autograd.

The schemas come from the C++ extension when it is built (csrc/flashcore.cpp) and are defined here
otherwise, from the same strings (flashcore/_schema.py). Either way one Python router is registered
for every device type: it asks `_backends` which backend serves the tensors' device and calls it.
torch.compile sees each op as one opaque node through its fake implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backends, _ext
from ._schema import BWD_SCHEMA, FWD_SCHEMA, NAMESPACE

FWD_NAME = f"{NAMESPACE}::fwd"
BWD_NAME = f"{NAMESPACE}::bwd"

# Defined by the extension's TORCH_LIBRARY when it loaded; otherwise here (kept alive in _LIB).
SCHEMAS_FROM_EXTENSION = _ext.has_op(NAMESPACE, "fwd") and _ext.has_op(NAMESPACE, "bwd")
_LIB = None
if not SCHEMAS_FROM_EXTENSION:
    _LIB = torch.library.Library(NAMESPACE, "DEF")
    _LIB.define(FWD_SCHEMA)
    _LIB.define(BWD_SCHEMA)


def _fwd_router(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                causal, window_left, window_right, softcap, deterministic):
    backend = _backends.for_device(q.device)
    backend.check(q, k, v)
    return backend.fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                       causal, window_left, window_right, softcap, deterministic)


def _bwd_router(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                softmax_scale, causal, window_left, window_right, softcap, deterministic):
    backend = _backends.for_device(q.device)
    backend.check(q, k, v)
    return backend.bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                       max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap, deterministic)


# device_types=None: one registration (CompositeExplicitAutograd) serves every device type.
torch.library.register_kernel(FWD_NAME, None, _fwd_router, lib=_LIB)
torch.library.register_kernel(BWD_NAME, None, _bwd_router, lib=_LIB)


def _lse_shape(q: Tensor, varlen: bool) -> tuple:
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


@torch.library.register_fake(FWD_NAME, lib=_LIB)
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
              window_left, window_right, softcap, deterministic):
    out = q.new_empty(q.shape)
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
    return out, lse


@torch.library.register_fake(BWD_NAME, lib=_LIB)
def _bwd_fake(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
              softmax_scale, causal, window_left, window_right, softcap, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_SCALARS = ("max_seqlen_q", "max_seqlen_k", "softmax_scale", "causal", "window_left", "window_right",
            "softcap", "deterministic")


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.scalars = scalars


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    if dout is None:  # only lse was used downstream
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.flashcore.bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k,
                                         *ctx.scalars)
    return (dq, dk, dv) + (None,) * (2 + len(_SCALARS))


torch.library.register_autograd(FWD_NAME, _backward, setup_context=_setup_context, lib=_LIB)
