"""A float64 naive attention (full score matrix) that every test compares against.

Written independently of flashcore.reference: expanded K/V heads, one logsumexp, no chunking.
"""

import torch


def visible(seqlen_q, seqlen_k, causal=False, window=(-1, -1)):
    """(seqlen_q, seqlen_k) bool: bottom-right aligned causal / sliding-window band."""
    left, right = window
    if causal:
        right = 0
    diag = torch.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
    cols = torch.arange(seqlen_k)[None, :]
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if right >= 0:
        mask &= cols <= diag + right
    if left >= 0:
        mask &= cols >= diag - left
    return mask


def attention(q, k, v, causal=False, softmax_scale=None, window=(-1, -1), softcap=0.0):
    """q (b, sq, hq, d), k/v (b, sk, hkv, d), any float dtype -> float64 out (b, sq, hq, d), lse (b, hq, sq).

    Differentiable (plain autograd); rows that see nothing give out 0 and lse -inf.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    mask = visible(q.shape[1], k.shape[1], causal, window).to(q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.where(mask, torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]), 0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


def attention_varlen(q, k, v, cu_q, cu_k, **kw):
    """Packed version: loops over sequences. Returns out (total_q, hq, d), lse (hq, total_q)."""
    outs, lses = [], []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cq) - 1):
        qs, ks, vs = q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]]
        if qs.shape[0] == 0:
            continue
        if ks.shape[0] == 0:
            outs.append(torch.zeros_like(qs, dtype=torch.float64))
            lses.append(torch.full((q.shape[1], qs.shape[0]), float("-inf"), dtype=torch.float64))
            continue
        o, l = attention(qs[None], ks[None], vs[None], **kw)
        outs.append(o[0])
        lses.append(l[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def rel_err(x, ref):
    """max |x - ref| / max |ref|, over finite reference entries."""
    x, ref = x.double(), ref.double()
    finite = torch.isfinite(ref)
    denom = ref[finite].abs().max().clamp_min(1e-12)
    return ((x - ref).abs()[finite].max() / denom).item()
