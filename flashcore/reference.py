"""The PyTorch reference: exact, memory-lean attention forward and an explicit backward.

It serves CPUs and GPUs without a hand-written kernel, and every test compares against it.

- Exact: scores, softmax and products accumulate in float32 (float64 for float64 inputs).
- Memory-lean: queries and keys are processed in chunks with an online softmax, so no
  (seqlen_q, seqlen_k) matrix is ever materialised; a 32k-token sequence needs one score tile.
- GQA/MQA without K/V copies: the query heads of a group are folded into the row dimension of one
  matrix product against their shared K/V head, so dK/dV sum over the group inside the product.
- Explicit backward: recomputes P from the saved log-sum-exp tile by tile (no stored matrix).

Layout at this boundary: q (batch, seqlen_q, heads_q, head_dim), k/v (batch, seqlen_k, heads_kv,
head_dim), lse (batch, heads_q, seqlen_q). Varlen inputs are packed (total, heads, head_dim) and are
served one sequence at a time by the dense path.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# One score tile (batch · heads_q · q_chunk · k_chunk elements of the accumulation dtype) is the
# largest temporary; 64 MiB keeps a 32k-token sequence with 16 heads at 1024×1024 tiles.
SCORE_TILE_BYTES = 64 << 20
# Chunks are multiples of this so tiles stay friendly to the matmul kernels underneath.
CHUNK_ALIGN = 64


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (tests use it for exactness); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_sizes(batch: int, heads_q: int, seqlen_q: int, seqlen_k: int, elem_bytes: int,
                 q_chunk: Optional[int], k_chunk: Optional[int]) -> tuple[int, int]:
    budget = max(SCORE_TILE_BYTES // (batch * heads_q * elem_bytes), CHUNK_ALIGN * CHUNK_ALIGN)
    side = max(CHUNK_ALIGN, int(math.isqrt(budget)) // CHUNK_ALIGN * CHUNK_ALIGN)
    qc = q_chunk or min(seqlen_q, side)
    kc = k_chunk or min(seqlen_k, max(CHUNK_ALIGN, budget // max(qc, 1) // CHUNK_ALIGN * CHUNK_ALIGN))
    return max(qc, 1), max(kc, 1)


class _Mask:
    """Which keys each query sees: the bottom-right aligned causal/sliding-window band.

    Query i sees key j when  i + off - left <= j <= i + off + right,  off = seqlen_k - seqlen_q,
    with left/right = -1 meaning unbounded on that side (causal is right = 0).
    """

    def __init__(self, seqlen_q: int, seqlen_k: int, window_left: int, window_right: int):
        self.offset = seqlen_k - seqlen_q
        self.left = window_left
        self.right = window_right

    def tile_state(self, q0: int, q1: int, k0: int, k1: int) -> str:
        """'empty' (skip the tile), 'full' (no masking needed) or 'partial'."""
        lo_first, hi_last = q0 + self.offset, q1 - 1 + self.offset  # diagonal of first/last row
        if self.right >= 0 and k0 > hi_last + self.right:
            return "empty"
        if self.left >= 0 and k1 - 1 < lo_first - self.left:
            return "empty"
        full_right = self.right < 0 or k1 - 1 <= lo_first + self.right
        full_left = self.left < 0 or k0 >= hi_last - self.left
        return "full" if full_right and full_left else "partial"

    def tile(self, q0: int, q1: int, k0: int, k1: int, device: torch.device) -> Tensor:
        """Boolean (q1-q0, k1-k0) tile, True where the key is visible."""
        diag = torch.arange(q0, q1, device=device)[:, None] + self.offset
        cols = torch.arange(k0, k1, device=device)[None, :]
        visible = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=device)
        if self.right >= 0:
            visible &= cols <= diag + self.right
        if self.left >= 0:
            visible &= cols >= diag - self.left
        return visible


def _grouped(x: Tensor, heads_kv: int, acc: torch.dtype) -> Tensor:
    """(batch, seqlen, heads_q, d) -> (batch, heads_kv, group, seqlen, d) in the accumulation dtype."""
    b, s, hq, d = x.shape
    return x.to(acc).view(b, s, heads_kv, hq // heads_kv, d).permute(0, 2, 3, 1, 4)


def _kv_major(x: Tensor, acc: torch.dtype) -> Tensor:
    """(batch, seqlen, heads_kv, d) -> (batch, heads_kv, seqlen, d) in the accumulation dtype."""
    return x.to(acc).permute(0, 2, 1, 3)


def _scores(q_c: Tensor, k_c: Tensor, scale: float, softcap: float) -> tuple[Tensor, Optional[Tensor]]:
    """Scores of a (b, hkv, g, cq, d) query chunk against a (b, hkv, ck, d) key chunk.

    Returns s (b, hkv, g, cq, ck) and, with softcap, t = tanh(qk·scale/softcap) for the backward.
    """
    b, hkv, g, cq, d = q_c.shape
    raw = torch.matmul(q_c.reshape(b, hkv, g * cq, d), k_c.transpose(-1, -2)).view(b, hkv, g, cq, -1)
    if softcap > 0.0:
        t = torch.tanh(raw * (scale / softcap))
        return t * softcap, t
    return raw * scale, None


def _score_tiles(q_c: Tensor, kt: Tensor, mask: _Mask, q0: int, q1: int, k_chunk: int, scale: float,
                 softcap: float):
    """Masked scores of query rows [q0, q1) against each key chunk they can see.

    Yields (k0, k1, s, t) with s (b, hkv, g, q1-q0, k1-k0), -inf where masked; fully masked chunks are
    skipped and fully visible ones are not masked at all.
    """
    sk = kt.shape[2]
    for k0 in range(0, sk, k_chunk):
        k1 = min(k0 + k_chunk, sk)
        state = mask.tile_state(q0, q1, k0, k1)
        if state == "empty":
            continue
        s, t = _scores(q_c, kt[:, :, k0:k1], scale, softcap)
        if state == "partial":
            s = s.masked_fill(~mask.tile(q0, q1, k0, k1, q_c.device), float("-inf"))
        yield k0, k1, s, t


def _plan(q: Tensor, k: Tensor, v: Tensor, window_left: int, window_right: int, q_chunk: Optional[int],
          k_chunk: Optional[int]):
    """Shapes, accumulation dtype, mask, chunk sizes and head-major K/V shared by forward and backward."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    acc = accumulation_dtype(q.dtype)
    qc, kc = _chunk_sizes(b, hq, sq, sk, torch.finfo(acc).bits // 8, q_chunk, k_chunk)
    return (b, sq, hq, d, sk, hkv, hq // hkv, acc, _Mask(sq, sk, window_left, window_right), qc, kc,
            _kv_major(k, acc), _kv_major(v, acc))


def forward(q: Tensor, k: Tensor, v: Tensor, *, softmax_scale: float, window_left: int = -1,
            window_right: int = -1, softcap: float = 0.0, q_chunk: Optional[int] = None,
            k_chunk: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Dense attention forward.

    q (b, sq, hq, d), k/v (b, sk, hkv, d) -> out (b, sq, hq, d) in q's dtype, lse (b, hq, sq) float32.
    Rows that see no key get out = 0, lse = -inf. NaN in the inputs propagates to the outputs.
    """
    b, sq, hq, d, sk, hkv, g, acc, mask, qc, kc, kt, vt = _plan(q, k, v, window_left, window_right,
                                                                q_chunk, k_chunk)
    out = torch.empty(b, sq, hkv, g, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hkv, g, sq, dtype=torch.float32, device=q.device)
    neg_inf = float("-inf")
    for q0 in range(0, sq, qc):
        q1 = min(q0 + qc, sq)
        q_c = _grouped(q[:, q0:q1], hkv, acc)
        row_max = torch.full((b, hkv, g, q1 - q0), neg_inf, dtype=acc, device=q.device)
        row_sum = torch.zeros_like(row_max)
        o_c = torch.zeros(b, hkv, g, q1 - q0, d, dtype=acc, device=q.device)
        for k0, k1, s, _ in _score_tiles(q_c, kt, mask, q0, q1, kc, softmax_scale, softcap):
            new_max = torch.maximum(row_max, s.amax(dim=-1))
            # A row with nothing visible yet keeps max -inf; shift by 0 there to avoid inf - inf.
            shift = torch.where(new_max == neg_inf, torch.zeros_like(new_max), new_max)
            p = torch.exp(s - shift[..., None])
            rescale = torch.exp(row_max - shift)
            row_sum = row_sum * rescale + p.sum(dim=-1)
            pv = torch.matmul(p.view(b, hkv, g * (q1 - q0), k1 - k0), vt[:, :, k0:k1])
            o_c = o_c * rescale[..., None] + pv.view(b, hkv, g, q1 - q0, d)
            row_max = new_max
        empty = row_sum == 0
        o_c = torch.where(empty[..., None], 0.0, o_c / torch.where(empty, 1.0, row_sum)[..., None])
        out[:, q0:q1] = o_c.permute(0, 3, 1, 2, 4)
        lse[:, :, :, q0:q1] = torch.where(empty, neg_inf, row_max + torch.log(torch.where(empty, 1.0, row_sum)))
    return out.view(b, sq, hq, d), lse.view(b, hq, sq)


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
             dlse: Optional[Tensor] = None, *, softmax_scale: float, window_left: int = -1,
             window_right: int = -1, softcap: float = 0.0, q_chunk: Optional[int] = None,
             k_chunk: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Dense attention backward by recomputation.

    With s the (scaled, soft-capped) scores and P = exp(s - lse):
      dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ∘ (dP − D),  D = rowsum(dO ∘ O) − dlse,
      dQ = dS'·K,  dK = dS'ᵀ·Q,  dS' = dS · ds/d(qk) (scale, times 1 − tanh² with softcap).
    Returns dq, dk, dv in the dtypes of q, k, v.
    """
    b, sq, hq, d, sk, hkv, g, acc, mask, qc, kc, kt, vt = _plan(q, k, v, window_left, window_right,
                                                                q_chunk, k_chunk)
    lse_g = lse.to(acc).view(b, hkv, g, sq)
    # A row that saw no key has lse = -inf; +inf there makes P = exp(-inf - inf) = 0 instead of NaN.
    lse_g = torch.where(lse_g == float("-inf"), float("inf"), lse_g)
    delta = (dout.to(acc) * out.to(acc)).sum(dim=-1)  # (b, sq, hq)
    delta = delta.permute(0, 2, 1).reshape(b, hkv, g, sq)
    if dlse is not None:
        delta = delta - dlse.to(acc).view(b, hkv, g, sq)
    dq = torch.empty(b, sq, hkv, g, d, dtype=q.dtype, device=q.device)
    dk = torch.zeros(b, hkv, sk, d, dtype=acc, device=q.device)
    dv = torch.zeros(b, hkv, sk, d, dtype=acc, device=q.device)
    for q0 in range(0, sq, qc):
        q1 = min(q0 + qc, sq)
        rows = g * (q1 - q0)
        q_c = _grouped(q[:, q0:q1], hkv, acc)
        do_c = _grouped(dout[:, q0:q1], hkv, acc).reshape(b, hkv, rows, d)
        dq_c = torch.zeros(b, hkv, rows, d, dtype=acc, device=q.device)
        for k0, k1, s, t in _score_tiles(q_c, kt, mask, q0, q1, kc, softmax_scale, softcap):
            p = torch.exp(s - lse_g[:, :, :, q0:q1, None])
            p_rows = p.view(b, hkv, rows, k1 - k0)
            dv[:, :, k0:k1] += torch.matmul(p_rows.transpose(-1, -2), do_c)
            dp = torch.matmul(do_c, vt[:, :, k0:k1].transpose(-1, -2)).view_as(p)
            ds = p * (dp - delta[:, :, :, q0:q1, None])
            ds = ds * softmax_scale if t is None else ds * ((1.0 - t * t) * softmax_scale)
            ds_rows = ds.view(b, hkv, rows, k1 - k0)
            dq_c += torch.matmul(ds_rows, kt[:, :, k0:k1])
            dk[:, :, k0:k1] += torch.matmul(ds_rows.transpose(-1, -2), q_c.reshape(b, hkv, rows, d))
        dq[:, q0:q1] = dq_c.view(b, hkv, g, q1 - q0, d).permute(0, 3, 1, 2, 4)
    dk_out = torch.empty(b, sk, hkv, d, dtype=k.dtype, device=k.device).copy_(dk.permute(0, 2, 1, 3))
    dv_out = torch.empty(b, sk, hkv, d, dtype=v.dtype, device=v.device).copy_(dv.permute(0, 2, 1, 3))
    return dq.view(b, sq, hq, d), dk_out, dv_out


def _sequences(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor):
    """(start_q, end_q, start_k, end_k) per sequence of a packed batch (one host sync)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return [(cq[i], cq[i + 1], ck[i], ck[i + 1]) for i in range(len(cq) - 1)]


def forward_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                   **options) -> tuple[Tensor, Tensor]:
    """Packed forward: q (total_q, hq, d), k/v (total_k, hkv, d) -> out like q, lse (hq, total_q)."""
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:  # no queries, or nothing to see: out 0, lse -inf
            continue
        o, l = forward(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], **options)
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return out, lse


def backward_varlen(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    dlse: Optional[Tensor], cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                    **options) -> tuple[Tensor, Tensor, Tensor]:
    """Packed backward; lse/dlse are (hq, total_q)."""
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:
            continue
        g = backward(dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1], v[None, k0:k1],
                     out[None, q0:q1], lse[None, :, q0:q1],
                     None if dlse is None else dlse[None, :, q0:q1], **options)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
