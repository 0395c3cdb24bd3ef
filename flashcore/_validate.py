"""Input checks of the public API: every bad input is a TypeError/ValueError naming the argument,
what was given and what was expected, raised before any kernel runs."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def _tensor(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _rank(name: str, x: Tensor, rank: int, layout: str) -> None:
    if x.dim() != rank:
        raise ValueError(f"{name} must have {rank} dims {layout}, got shape {tuple(x.shape)}")


def _last_dim_contiguous(name: str, x: Tensor) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (head_dim), got strides {x.stride()}; "
                         f"call {name}.contiguous()")


def qkv(q, k, v, *, varlen: bool) -> None:
    """Ranks, dtypes, devices and the shape agreements among q, k, v."""
    q, k, v = _tensor("q", q), _tensor("k", k), _tensor("v", v)
    layout = "(total_tokens, heads, head_dim)" if varlen else "(batch, seqlen, heads, head_dim)"
    rank = 3 if varlen else 4
    for name, x in (("q", q), ("k", k), ("v", v)):
        _rank(name, x, rank, layout)
        if not x.is_floating_point():
            raise TypeError(f"{name}.dtype is {x.dtype}; expected bfloat16, float16 or float32")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name}.dtype is {x.dtype} but q.dtype is {q.dtype}; q, k, v must share a dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; q, k, v must share a device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"batch of k/v is {k.shape[0]} but batch of q is {q.shape[0]}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"head_dim of k/v is {k.shape[-1]} but head_dim of q is {q.shape[-1]}")
    if q.shape[-1] == 0:
        raise ValueError("head_dim is 0; expected at least 1")
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv == 0 or heads_q % heads_kv != 0:
        raise ValueError(f"heads of q ({heads_q}) must be a positive multiple of heads of k/v ({heads_kv}) "
                         f"(GQA/MQA groups query heads over shared K/V heads)")
    seq_dim, what = (0, "total tokens") if varlen else (1, "seqlen")
    for name, x in (("q", q), ("k", k)):
        if x.shape[seq_dim] == 0:
            raise ValueError(f"{what} of {name} is 0; expected at least 1")
    for name, x in (("q", q), ("k", k), ("v", v)):
        _last_dim_contiguous(name, x)


def options(*, causal, softmax_scale: Optional[float], window_size: Sequence[int], softcap, dropout_p,
            alibi_slopes, deterministic, head_dim: int) -> tuple[float, int, int, float]:
    """Returns (softmax_scale, window_left, window_right, softcap), normalised.

    As in FlashAttention 2/3: causal forces window_right = 0; window sides are -1 for unbounded.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise TypeError(f"window_size must be a pair (left, right) of ints, got {window_size!r}") from None
    for side, w in (("window_size[0]", left), ("window_size[1]", right)):
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"{side} must be an int, got {type(w).__name__}")
        if w < -1:
            raise ValueError(f"{side} is {w}; expected -1 (unbounded) or a size >= 0")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    if not softcap >= 0.0 or not math.isfinite(softcap):  # also rejects NaN
        raise ValueError(f"softcap is {softcap}; expected a finite value >= 0 (0 disables it)")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p is {dropout_p}; flashcore has no attention dropout (expected 0.0)")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes is not supported by flashcore (expected None)")
    if causal:
        right = 0
    return float(softmax_scale), int(left), int(right), float(softcap)


def cu_seqlens(q: Tensor, k: Tensor, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    """Packed-batch boundaries: int32, 1-D, equal length, from 0, non-decreasing, ending at the total."""
    cus = (("cu_seqlens_q", cu_seqlens_q, q, max_seqlen_q, "max_seqlen_q"),
           ("cu_seqlens_k", cu_seqlens_k, k, max_seqlen_k, "max_seqlen_k"))
    for name, cu, x, max_len, max_name in cus:
        _tensor(name, cu)
        if cu.dtype != torch.int32:
            raise TypeError(f"{name}.dtype is {cu.dtype}; expected torch.int32")
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"{name} must be 1-D with batch + 1 >= 2 entries, got shape {tuple(cu.shape)}")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"{max_name} must be an int >= 1, got {max_len!r}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q has {cu_seqlens_q.numel()} entries but cu_seqlens_k has "
                         f"{cu_seqlens_k.numel()}; both must be batch + 1")
    if torch.compiler.is_compiling():
        return  # the value checks below read the tensors on the host, which a traced graph cannot
    for name, cu, x, max_len, max_name in cus:
        values = cu.tolist()
        if values[0] != 0:
            raise ValueError(f"{name}[0] is {values[0]}; expected 0")
        lengths = [b - a for a, b in zip(values, values[1:])]
        if min(lengths) < 0:
            raise ValueError(f"{name} must be non-decreasing, got {values}")
        if values[-1] != x.shape[0]:
            raise ValueError(f"{name}[-1] is {values[-1]} but the packed tensor holds {x.shape[0]} tokens")
        if max(lengths) > max_len:
            raise ValueError(f"{max_name} is {max_len} but the longest sequence in {name} has {max(lengths)} tokens")
