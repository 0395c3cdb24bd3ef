"""Context parallelism: attention over a sequence sharded across the ranks of a process group.

    out = flashcore.distributed.context_parallel_attention(q, k, v, causal=True)   # q, k, v: this rank's shard

Every rank holds its shard (batch, seqlen/world, heads, head_dim) of one sequence; the result on each rank is
exactly its shard of full-sequence attention, and autograd delivers the gradients of its local q, k, v. Two
schedules, both built on the same two ops as `flashcore.attention` (`torch.ops.flashcore.fwd/bwd`, whatever
backend serves the device):

- ring: K/V shards travel once around the ring (batched isend/irecv), the transfer of the next shard posted
  before the attention on the shard in hand; partial outputs merge exactly through their log-sum-exp. The
  backward sends K/V around again with float32 dK/dV accumulators following them, so every rank ends with the
  full gradient of its own K/V. Each (query shard, key shard) block is split along the zig-zag chunks and
  translated into exact op calls on row/key slices (`block_call`); fully masked pieces are never computed.
- all_to_all (Ulysses): an all-to-all turns sequence shards into head shards, each rank runs the op over the
  full sequence (reassembled in true order) for its heads, and a second all-to-all turns back.

Sharding: zig-zag by default (rank r holds chunks r and 2·world−1−r of the sequence cut into 2·world chunks),
which balances causal work; `shard`, `unshard` and `gather` convert. `STATS` counts op calls (tests, profiling).
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops, _validate  # noqa: F401  (_ops registers torch.ops.flashcore.fwd/bwd)

__all__ = ["context_parallel_attention", "shard", "unshard", "gather", "block_call", "block_plan", "BlockCall",
           "STATS"]

MODES = ("ring", "all_to_all")
NEG_INF = float("-inf")

# Op calls made by this process: fwd_calls/bwd_calls (one per op call), fwd_area (query·key pairs handed to
# the forward op, the work the kernels see), skipped_blocks (ring steps whose whole K/V shard is masked).
STATS: collections.Counter = collections.Counter()


# ---------------------------------------------------------------------------------------------- sharding

def _chunk_ids(world: int, rank: int, zigzag: bool) -> tuple[int, ...]:
    """Which chunks of the sequence a rank holds, in local order (2·world chunks zig-zag, else world)."""
    return (rank, 2 * world - 1 - rank) if zigzag else (rank,)


def _check_divisible(length: int, world: int, zigzag: bool, what: str) -> int:
    parts = 2 * world if zigzag else world
    if length % parts:
        raise ValueError(f"{what} is {length}, not divisible by {parts} = "
                         f"{'2·world (zig-zag chunks)' if zigzag else 'world'} for world size {world}")
    return length // parts


def shard(x: Tensor, world: int, rank: int, dim: int = 1, zigzag: bool = True) -> Tensor:
    """This rank's shard of the full-sequence tensor `x` along `dim`.

    zigzag: the sequence is cut into 2·world chunks and rank r gets chunks r and 2·world−1−r (concatenated,
    a copy); otherwise it is cut into world chunks and rank r gets chunk r (a view).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank is {rank}; expected 0 <= rank < world ({world})")
    size = _check_divisible(x.shape[dim], world, zigzag, f"x.shape[{dim}]")
    pieces = [x.narrow(dim, c * size, size) for c in _chunk_ids(world, rank, zigzag)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def unshard(shards: Sequence[Tensor], dim: int = 1, zigzag: bool = True) -> Tensor:
    """The full-sequence tensor from every rank's shard (a list in rank order): the inverse of `shard`."""
    if not zigzag:
        return torch.cat(list(shards), dim)
    halves = []
    for r, s in enumerate(shards):
        _check_divisible(s.shape[dim], 1, True, f"shards[{r}].shape[{dim}]")
        halves.append(s.chunk(2, dim))
    return torch.cat([h[0] for h in halves] + [h[1] for h in reversed(halves)], dim)


def gather(x: Tensor, group=None, dim: int = 1, zigzag: bool = True) -> Tensor:
    """Collective: every rank passes its shard (equal shapes) and gets the full-sequence tensor (no autograd)."""
    _require_process_group()
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return unshard(parts, dim, zigzag)


# ------------------------------------------------------------------------------------- block translation

class BlockCall(NamedTuple):
    """One op call on a block: query rows [q0, q1) against keys [k0, k1) with window (left, right)."""
    q0: int
    q1: int
    k0: int
    k1: int
    left: int
    right: int

    @property
    def unmasked(self) -> bool:
        return self.left < 0 and self.right < 0


def block_call(q_start: int, q_len: int, k_start: int, k_len: int, left: int, right: int) -> Optional[BlockCall]:
    """Translate the global band of one block into one exact op call on a slice of it, or None to skip it.

    The block holds queries at global positions q_start + i (i < q_len) and keys at k_start + j (j < k_len);
    a query sees a key when  i_g − left ≤ j_g ≤ i_g + right  (−1: unbounded side). The op masks bottom-right:
    on an (m, n) slice, row i' sees key j' when  i' + (n − m) − left' ≤ j' ≤ i' + (n − m) + right'.

    Locally, row i sees keys [lo(i), hi(i)] ∩ [0, k_len) with lo(i) = i + t − left, hi(i) = i + t + right,
    t = q_start − k_start. Both ends grow with i, so the rows that see anything are one range [q0, q1) and
    together they see one key range [k0, k1). On that tight slice the last row sees the last key, so the
    slice's bottom-right diagonal lies inside the band: with shift = (q0 − k0 + t) − (n − m), the band is
    left' = left − shift ≥ 0, right' = right + shift ≥ 0. A side that clips no row of the slice becomes −1, so
    a fully visible block comes back as (0, q_len, 0, k_len, −1, −1). Rows outside [q0, q1) see nothing: their
    lse is −inf and they contribute nothing.

    Returns None when no query of the block sees any key.
    """
    t = q_start - k_start
    q0, q1 = 0, q_len
    if right >= 0:
        q0 = max(q0, -(t + right))              # hi(i) >= 0
    if left >= 0:
        q1 = min(q1, k_len + left - t)          # lo(i) <= k_len - 1
    if q0 >= q1:
        return None
    k0 = 0 if left < 0 else max(0, q0 + t - left)
    k1 = k_len if right < 0 else min(k_len, q1 - 1 + t + right + 1)
    shift = (q0 - k0 + t) - ((k1 - k0) - (q1 - q0))
    new_left = -1 if left < 0 or q1 - 1 + t - left <= k0 else left - shift
    new_right = -1 if right < 0 or q0 + t + right >= k1 - 1 else right + shift
    return BlockCall(q0, q1, k0, k1, new_left, new_right)


def _segments(world: int, rank: int, local_len: int, zigzag: bool) -> tuple[tuple[int, int, int], ...]:
    """(local_start, global_start, length) of each contiguous piece of a rank's shard."""
    size = local_len // 2 if zigzag else local_len
    return tuple((i * size, c * size, size) for i, c in enumerate(_chunk_ids(world, rank, zigzag)))


def block_plan(q_segments, k_segments, left: int, right: int) -> list[BlockCall]:
    """The op calls (in local coordinates) for a query shard against a key shard, both given as segments
    (local_start, global_start, length).

    Each pair of segments is translated by `block_call`; fully visible pieces that line up (same rows and
    adjacent keys, or same keys and adjacent rows) are fused into one call. A shard against itself under a mask
    that only compares positions (causal, or none) is one call: equal, increasing maps keep the order.
    """
    if q_segments == k_segments and left < 0 and right <= 0:
        n = sum(s[2] for s in q_segments)
        return [BlockCall(0, n, 0, n, -1, right)]
    calls = []
    for ql, qg, qn in q_segments:
        for kl, kg, kn in k_segments:
            c = block_call(qg, qn, kg, kn, left, right)
            if c is not None:
                calls.append(BlockCall(c.q0 + ql, c.q1 + ql, c.k0 + kl, c.k1 + kl, c.left, c.right))
    fused = True
    while fused:
        fused = False
        for x in calls:
            for y in calls:
                if x is y or not (x.unmasked and y.unmasked):
                    continue
                if (x.q0, x.q1) == (y.q0, y.q1) and x.k1 == y.k0:
                    z = BlockCall(x.q0, x.q1, x.k0, y.k1, -1, -1)
                elif (x.k0, x.k1) == (y.k0, y.k1) and x.q1 == y.q0:
                    z = BlockCall(x.q0, y.q1, x.k0, x.k1, -1, -1)
                else:
                    continue
                calls = [c for c in calls if c is not x and c is not y] + [z]
                fused = True
                break
            if fused:
                break
    return sorted(calls)


# ------------------------------------------------------------------------------------------------- merge

def _merge_(acc_out: Tensor, acc_lse: Tensor, out: Tensor, lse: Tensor, q0: int, q1: int) -> None:
    """Fold a partial result of rows [q0, q1) into the float32 accumulators, exactly:
    lse = logaddexp(lse_acc, lse_b), out = exp(lse_acc − lse)·out_acc + exp(lse_b − lse)·out_b.

    acc_out (batch, seqlen, heads, d) float32, acc_lse (batch, heads, seqlen) float32;
    out (batch, q1−q0, heads, d), lse (batch, heads, q1−q0). Rows still at −inf on both sides stay 0 / −inf.
    """
    o, l = acc_out[:, q0:q1], acc_lse[:, :, q0:q1]
    new = torch.logaddexp(l, lse)
    safe = torch.where(new == NEG_INF, 0.0, new)  # both −inf: exp(−inf − 0) = 0 weights, not NaN
    o.mul_(torch.exp(l - safe).transpose(1, 2).unsqueeze(-1))
    o.addcmul_(out, torch.exp(lse - safe).transpose(1, 2).unsqueeze(-1))
    l.copy_(new)


# --------------------------------------------------------------------------------------- checks, agreement

def _require_process_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("flashcore.distributed needs an initialised process group: call "
                           "torch.distributed.init_process_group(...) first (gloo for CPU tensors, nccl for GPUs)")


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SHAPE_FIELDS = ("batch", "seqlen", "heads_q", "heads_kv", "head_dim", "dtype")
_OPTION_FIELDS = ("mode", "zigzag", "causal", "window_left", "window_right", "softmax_scale", "softcap",
                  "return_lse", "deterministic")


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _unbits(n: int) -> float:
    return struct.unpack("<d", struct.pack("<q", n))[0]


def _agree(q, k, group, world: int, local_error: Optional[Exception], options: tuple) -> None:
    """One all_gather of a few int64 per rank (shapes, dtype, options, an ok flag) so that every rank raises
    the same error instead of some ranks hanging in a transfer the others never start.

    Cost: an all_gather of 16·8 bytes per rank (latency-bound, tens of µs) and one device-to-host read of the
    result, which waits for the work already queued on the device.
    """
    if local_error is None:
        mode, zigzag, causal, left, right, scale, cap, return_lse, det = options
        dtype = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else len(_DTYPES)
        row = [1, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3], dtype, MODES.index(mode),
               int(zigzag), int(causal), left, right, _bits(scale), _bits(cap), int(return_lse), int(det)]
    else:
        row = [0] + [0] * (len(_SHAPE_FIELDS) + len(_OPTION_FIELDS))
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    mine = torch.tensor(row, dtype=torch.int64, device=device)
    rows = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(rows, mine, group=group)
    table = torch.stack(rows).tolist()
    if local_error is not None:
        raise local_error
    bad = [r for r, t in enumerate(table) if t[0] == 0]
    if bad:
        raise RuntimeError(f"context_parallel_attention: rank(s) {bad} rejected their inputs (see the error raised "
                           f"there); nothing was computed")
    shapes = [tuple(t[1:1 + len(_SHAPE_FIELDS)]) for t in table]
    if len(set(shapes)) > 1:
        described = "; ".join(f"rank {r}: q ({s[0]}, {s[1]}, {s[2]}, {s[4]}), k/v ({s[0]}, {s[1]}, {s[3]}, {s[4]}), "
                              f"{_DTYPES[s[5]] if s[5] < len(_DTYPES) else '?'}" for r, s in enumerate(shapes))
        raise ValueError(f"context_parallel_attention: shards differ across ranks ({described}); every rank must "
                         f"hold an equal shard (batch, seqlen/world, heads, head_dim) of the same sequence")
    for i, name in enumerate(_OPTION_FIELDS):
        values = [t[1 + len(_SHAPE_FIELDS) + i] for t in table]
        if len(set(values)) > 1:
            shown = {"mode": lambda n: MODES[n], "softmax_scale": _unbits, "softcap": _unbits}.get(name, lambda n: n)
            raise ValueError(f"context_parallel_attention: {name} differs across ranks: "
                             f"{[shown(n) for n in values]} (in rank order); every rank must pass the same options")


# -------------------------------------------------------------------------------------------------- ring

@dataclass
class _Ring:
    group: object
    world: int
    rank: int
    next: int               # global ranks of the ring neighbours
    prev: int
    calls: list             # calls[t]: the BlockCalls against the K/V shard in hand at step t (from rank − t)
    scale: float
    softcap: float
    deterministic: bool


def _exchange(send: Sequence[Tensor], recv: Sequence[Tensor], ring: _Ring) -> list:
    """Post sends to the next rank and receives from the previous one as one batch; returns the requests.
    Every rank posts the same sequence, so the n-th send of a rank meets the n-th receive of its successor."""
    if not send:
        return []
    ops = [dist.P2POp(dist.isend, t, ring.next, ring.group) for t in send]
    ops += [dist.P2POp(dist.irecv, t, ring.prev, ring.group) for t in recv]
    return dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for r in requests:
        r.wait()


def _ring_forward(q: Tensor, k: Tensor, v: Tensor, ring: _Ring) -> tuple[Tensor, Tensor]:
    """q (b, s, hq, d), k/v (b, s, hkv, d) local -> out (b, s, hq, d) in q's dtype, lse (b, hq, s) float32."""
    b, s, hq, d = q.shape
    acc_out = torch.zeros(b, s, hq, d, dtype=torch.float32, device=q.device)
    acc_lse = torch.full((b, hq, s), NEG_INF, dtype=torch.float32, device=q.device)
    kv = (k, v)
    for step, calls in enumerate(ring.calls):
        incoming, pending = (), []
        if step + 1 < ring.world:  # post the next transfer before computing on the shard in hand
            incoming = (torch.empty_like(k), torch.empty_like(v))
            pending = _exchange(kv, incoming, ring)
        STATS["skipped_blocks"] += int(not calls)
        for c in calls:
            out, lse = torch.ops.flashcore.fwd(
                q[:, c.q0:c.q1], kv[0][:, c.k0:c.k1], kv[1][:, c.k0:c.k1], None, None, c.q1 - c.q0, c.k1 - c.k0,
                ring.scale, c.right == 0, c.left, c.right, ring.softcap, ring.deterministic)
            STATS["fwd_calls"] += 1
            STATS["fwd_area"] += (c.q1 - c.q0) * (c.k1 - c.k0)
            _merge_(acc_out, acc_lse, out, lse, c.q0, c.q1)
        _wait(pending)
        kv = incoming or kv
    return acc_out.to(q.dtype), acc_lse


def _ring_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                   lse: Tensor, ring: _Ring) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the local q, k, v. Every block is differentiated with the final out and lse, so each call
    gives its exact share (P = exp(S − lse), D = rowsum(dO∘O) − dlse). K/V go around the ring again; the float32
    dK/dV of the shard in hand travel one step behind, and a last hop brings each home complete."""
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv, dkv = (k, v), ()
    for step, calls in enumerate(ring.calls):
        incoming, dkv_in, send, recv = (), (), [], []
        if step + 1 < ring.world:
            incoming = (torch.empty_like(k), torch.empty_like(v))
            send, recv = [*kv], [*incoming]
        if step > 0:  # the accumulators of the shard now in hand, from the previous rank's last step
            dkv_in = (torch.empty(k.shape, dtype=torch.float32, device=k.device), torch.empty_like(dkv[1]))
            send, recv = send + [*dkv], recv + [*dkv_in]
        pending = _exchange(send, recv, ring)
        dk_blk = dv_blk = None
        for c in calls:
            rows, keys = slice(c.q0, c.q1), slice(c.k0, c.k1)
            dq_c, dk_c, dv_c = torch.ops.flashcore.bwd(
                dout[:, rows], q[:, rows], kv[0][:, keys], kv[1][:, keys], out[:, rows],
                lse[:, :, rows].contiguous(), None if dlse is None else dlse[:, :, rows].contiguous(), None, None,
                c.q1 - c.q0, c.k1 - c.k0, ring.scale, c.right == 0, c.left, c.right, ring.softcap,
                ring.deterministic)
            STATS["bwd_calls"] += 1
            if dk_blk is None:
                dk_blk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
                dv_blk = torch.zeros_like(dk_blk)
            dq[:, rows] += dq_c
            dk_blk[:, keys] += dk_c
            dv_blk[:, keys] += dv_c
        _wait(pending)
        if not dkv_in:
            dkv = (dk_blk, dv_blk) if dk_blk is not None else (torch.zeros(k.shape, dtype=torch.float32,
                                                                           device=k.device),) * 2
        else:
            dkv = dkv_in if dk_blk is None else (dkv_in[0].add_(dk_blk), dkv_in[1].add_(dv_blk))
        kv = incoming or kv
    if ring.world > 1:
        home = (torch.empty_like(dkv[0]), torch.empty_like(dkv[1]))
        _wait(_exchange(dkv, home, ring))
        dkv = home
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring: _Ring):
        out, lse = _ring_forward(q, k, v, ring)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring = ring
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:  # only lse was used downstream
            dout = torch.zeros_like(out)
        dq, dk, dv = _ring_backward(dout, dlse, q, k, v, out, lse, ctx.ring)
        return dq, dk, dv, None


# ---------------------------------------------------------------------------------------- all-to-all

class _AllToAll(torch.autograd.Function):
    """x (world, ...) contiguous: piece j goes to rank j, piece i of the result came from rank i. With equal
    pieces this exchange is its own adjoint, so the backward is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = torch.empty_like(x)
        dist.all_to_all_single(y, x, group=group)
        return y

    @staticmethod
    def backward(ctx, dy):
        dy = dy.contiguous()  # before empty_like, which would copy a permuted gradient's strides
        dx = torch.empty_like(dy)
        dist.all_to_all_single(dx, dy, group=ctx.group)
        return dx, None


def _seq_to_heads(x: Tensor, group, world: int, zigzag: bool) -> Tensor:
    """(b, s, h, d) sequence shard -> (b, world·s, h/world, d): the full sequence, in true order, of this rank's
    head group."""
    b, s, h, d = x.shape
    send = x.reshape(b, s, world, h // world, d).permute(2, 0, 1, 3, 4).contiguous()  # (world, b, s, h/w, d)
    recv = _AllToAll.apply(send, group)                                               # piece i: rank i's tokens
    if zigzag:  # rank i held chunks i and 2w−1−i: chunk c < w is recv[c][0], chunk c >= w is recv[2w−1−c][1]
        halves = recv.view(world, b, 2, s // 2, h // world, d)
        recv = torch.cat([halves[:, :, 0], halves[:, :, 1].flip(0)], 0)                # (2w, b, s/2, h/w, d)
    return recv.transpose(0, 1).reshape(b, world * s, h // world, d)


def _heads_to_seq(y: Tensor, group, world: int, zigzag: bool) -> Tensor:
    """Inverse of `_seq_to_heads`: (b, S, h/world, d) -> (b, S/world, h, d)."""
    b, n, hg, d = y.shape
    s = n // world
    if zigzag:
        chunks = y.reshape(b, 2 * world, s // 2, hg, d).transpose(0, 1)                   # (2w, b, s/2, hg, d)
        send = torch.stack([chunks[:world], chunks[world:].flip(0)], 2).reshape(world, b, s, hg, d)
    else:
        send = y.reshape(b, world, s, hg, d).transpose(0, 1).contiguous()
    recv = _AllToAll.apply(send, group)                                # piece j: my tokens of head group j
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s, world * hg, d)


def _check_heads(heads_q: int, heads_kv: int, world: int) -> None:
    if heads_q % world:
        raise ValueError(f"mode='all_to_all' splits heads across ranks: heads of q ({heads_q}) must be divisible "
                         f"by the world size ({world}); use mode='ring'")
    if heads_kv % world and world % heads_kv:
        raise ValueError(f"mode='all_to_all' splits heads across ranks: heads of k/v ({heads_kv}) must be divisible "
                         f"by the world size ({world}), or divide it (then K/V heads are replicated); use "
                         f"mode='ring'")


def _all_to_all_attention(q, k, v, group, world, zigzag, scale, causal, left, right, cap, det, return_lse):
    if k.shape[2] % world:  # fewer K/V heads than ranks: each rank's query heads share one K/V head; send it
        k = k.repeat_interleave(world // k.shape[2], dim=2)  # to each of them (exact; autograd sums dK back)
        v = v.repeat_interleave(world // v.shape[2], dim=2)
    qh, kh, vh = (_seq_to_heads(x, group, world, zigzag) for x in (q, k, v))
    n = qh.shape[1]
    out, lse = torch.ops.flashcore.fwd(qh, kh, vh, None, None, n, n, scale, causal, left, right, cap, det)
    STATS["fwd_calls"] += 1
    STATS["fwd_area"] += n * n
    out = _heads_to_seq(out, group, world, zigzag)
    if not return_lse:
        return out, None
    lse = _heads_to_seq(lse.transpose(1, 2).unsqueeze(-1), group, world, zigzag)  # as (b, S, h/w, 1)
    return out, lse.squeeze(-1).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- public

def context_parallel_attention(q: Tensor, k: Tensor, v: Tensor, group=None, *, mode: str = "ring",
                               causal: bool = False, softmax_scale: Optional[float] = None,
                               window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                               return_lse: bool = False, deterministic: bool = False,
                               zigzag: bool = True) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Attention over a sequence sharded across the ranks of `group`; collective (every rank calls it).

    Args:
        q: (batch, seqlen/world, heads_q, head_dim), this rank's shard; k, v: (batch, seqlen/world, heads_kv,
            head_dim), the same tokens. Every rank holds an equal shard, as `shard(x, world, rank, zigzag=...)`
            cuts it.
        group: the process group (default: the world).
        mode: "ring" (K/V around the ring, any head count) or "all_to_all" (head-parallel; heads_q divisible by
            world, heads_kv divisible by world or dividing it).
        causal, softmax_scale, window_size, softcap, deterministic: as in `flashcore.attention`, applied to the
            full sequence.
        return_lse: also return this rank's shard (batch, heads_q, seqlen/world) of the log-sum-exp, float32.
        zigzag: the shards are zig-zag (rank r holds chunks r and 2·world−1−r of 2·world); False: contiguous.

    Returns:
        out (batch, seqlen/world, heads_q, head_dim): this rank's shard of full-sequence attention, or (out, lse).

    Raises RuntimeError without a process group; ValueError/TypeError for bad input (as flashcore.attention),
    shards or options that differ across ranks (one small all_gather detects them, so every rank raises),
    a sequence the sharding cannot split, or heads that all_to_all cannot split.
    """
    _require_process_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank < 0:
        raise RuntimeError("context_parallel_attention: this process is not a member of `group`")
    error, options = None, None
    try:
        _validate.qkv(q, k, v, varlen=False)
        scale, left, right, cap = _validate.options(
            causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap, dropout_p=0.0,
            alibi_slopes=None, deterministic=deterministic, head_dim=q.shape[-1])
        if mode not in MODES:
            raise ValueError(f"mode is {mode!r}; expected one of {MODES}")
        for name, flag in (("return_lse", return_lse), ("zigzag", zigzag)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if k.shape[1] != q.shape[1]:
            raise ValueError(f"context parallelism shards one sequence: q holds {q.shape[1]} tokens but k/v hold "
                             f"{k.shape[1]}; expected the same tokens")
        options = (mode, zigzag, causal, left, right, scale, cap, return_lse, deterministic)
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(q, k, group, world, error, options)
    seqlen = q.shape[1]
    if zigzag and seqlen % 2:
        raise ValueError(f"zig-zag sharding cuts the sequence into 2·world = {2 * world} chunks: the local seqlen "
                         f"({seqlen}) must be even (the full seqlen {world * seqlen} divisible by {2 * world}); "
                         f"cut it with flashcore.distributed.shard(x, world, rank), or pass zigzag=False")
    if mode == "all_to_all":
        _check_heads(q.shape[2], k.shape[2], world)
        out, lse = _all_to_all_attention(q, k, v, group, world, zigzag, scale, causal, left, right, cap,
                                         deterministic, return_lse)
    else:
        mine = _segments(world, rank, seqlen, zigzag)
        calls = [block_plan(mine, _segments(world, (rank - t) % world, seqlen, zigzag), left, right)
                 for t in range(world)]
        peer = group if group is not None else dist.group.WORLD
        ring = _Ring(group, world, rank, dist.get_global_rank(peer, (rank + 1) % world),
                     dist.get_global_rank(peer, (rank - 1) % world), calls, scale, cap, deterministic)
        out, lse = _RingAttention.apply(q, k.contiguous(), v.contiguous(), ring)
    return (out, lse) if return_lse else out
