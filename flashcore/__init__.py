"""flashcore: FlashAttention-class attention for training, hand-written per GPU.

    out = flashcore.attention(q, k, v, causal=True)          # (batch, seqlen, heads, head_dim)
    out = flashcore.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True)  # packed

Argument names follow flash_attn's `flash_attn_func` / `flash_attn_varlen_func`. Autograd and
torch.compile work through the custom ops `flashcore::fwd` / `flashcore::bwd`; which backend serves a
device is decided once (`flashcore.backend()`, `flashcore.info()`; override with FLASHCORE_BACKEND).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _backends, _ext, _ops, _validate, reference  # noqa: F401  (_ops registers the ops)
from ._backends import BackendUnavailableError

__version__ = "0.1.0"
__all__ = ["attention", "attention_varlen", "backend", "info", "advise", "BackendUnavailableError", "__version__"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, softmax_scale: Optional[float] = None,
              window_size: Sequence[int] = (-1, -1), softcap: float = 0.0, return_lse: bool = False,
              deterministic: bool = False, dropout_p: float = 0.0,
              alibi_slopes: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Scaled dot-product attention, FlashAttention style.

    Args:
        q: (batch, seqlen_q, heads_q, head_dim), bfloat16 or float16 (float32 on the reference).
        k, v: (batch, seqlen_k, heads_kv, head_dim); heads_q must be a multiple of heads_kv (GQA/MQA).
        causal: mask keys after the query, aligned to the bottom-right corner when seqlen_q != seqlen_k.
        softmax_scale: defaults to 1/sqrt(head_dim).
        window_size: (left, right) sliding window, -1 = unbounded; causal forces right = 0.
        softcap: if > 0, scores become softcap·tanh(scores/softcap) before the softmax.
        return_lse: also return the log-sum-exp (batch, heads_q, seqlen_q) in float32 (-inf for rows
            that see no key); it is differentiable.
        deterministic: bit-identical gradients across runs (ordered dQ accumulation).
        dropout_p, alibi_slopes: accepted for flash_attn compatibility; must be 0.0 / None.

    Returns:
        out (batch, seqlen_q, heads_q, head_dim) in q's dtype, or (out, lse) with return_lse.
    """
    _validate.qkv(q, k, v, varlen=False)
    scale, left, right, cap = _validate.options(
        causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
        dropout_p=dropout_p, alibi_slopes=alibi_slopes, deterministic=deterministic, head_dim=q.shape[-1])
    out, lse = torch.ops.flashcore.fwd(q, k, v, None, None, q.shape[1], k.shape[1], scale, causal, left, right,
                                       cap, deterministic)
    return (out, lse) if return_lse else out


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     softmax_scale: Optional[float] = None, window_size: Sequence[int] = (-1, -1),
                     softcap: float = 0.0, return_lse: bool = False, deterministic: bool = False,
                     dropout_p: float = 0.0,
                     alibi_slopes: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Attention over a packed batch of variable-length sequences.

    Args:
        q: (total_q, heads_q, head_dim); k, v: (total_k, heads_kv, head_dim).
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) prefix sums of the sequence lengths, from 0.
        max_seqlen_q, max_seqlen_k: the longest sequence of each (an upper bound is fine).
        Options as in `attention`; masks are aligned per sequence.

    Returns:
        out (total_q, heads_q, head_dim), or (out, lse) with lse (heads_q, total_q) float32.
    """
    _validate.qkv(q, k, v, varlen=True)
    _validate.cu_seqlens(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scale, left, right, cap = _validate.options(
        causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
        dropout_p=dropout_p, alibi_slopes=alibi_slopes, deterministic=deterministic, head_dim=q.shape[-1])
    out, lse = torch.ops.flashcore.fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                                       causal, left, right, cap, deterministic)
    return (out, lse) if return_lse else out


def __getattr__(name: str):
    # flashcore.distributed (context parallelism) loads on first use: torch.distributed stays unimported otherwise.
    # flashcore.advise (the shape advisor) too; the module is callable, so flashcore.advise(gpu=..., ...) works
    # before and after `import flashcore.advise` rebinds the attribute to the module.
    if name in ("distributed", "advise"):
        import importlib
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'flashcore' has no attribute {name!r}")


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def backend(device: Union[torch.device, str, None] = None) -> str:
    """Name of the backend serving `device` (default: the current GPU, else the CPU)."""
    device = _default_device() if device is None else torch.device(device)
    return _backends.choose(device)[0].name


def info() -> dict:
    """Which backend serves which device and why, what the extension holds, and the policy.

    JSON-serialisable; `python -m flashcore` prints it.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    served = []
    for dev in devices:
        entry: dict = {"device": str(dev)}
        if dev.type == "cuda":
            entry["name"] = torch.cuda.get_device_name(dev)
        try:
            chosen, why = _backends.choose(dev)
            entry.update(backend=chosen.name, why=why)
        except BackendUnavailableError as exc:
            entry.update(backend=None, why=str(exc))
        served.append(entry)
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_build": "cuda " + torch.version.cuda if torch.version.cuda
        else ("hip " + torch.version.hip if getattr(torch.version, "hip", None) else "cpu"),
        "requested": _backends.REQUESTED,
        "extension": _ext.build_info(),
        "ops_defined_in": "C++ extension" if _ops.SCHEMAS_FROM_EXTENSION else "Python",
        "devices": served,
        "backends": {name: {"default_on": b.default_on()[0], "dtypes": [str(t) for t in b.dtypes]}
                     for name, b in _backends.BACKENDS.items()},
    }
