"""Context parallelism (flashcore.distributed): the block-mask translation, then ring and all-to-all attention
in spawned gloo processes (world 2 and 4) against single-process flashcore.attention on the full tensors,
the error cases, skipped blocks, and a NCCL run where two GPUs exist.

The multi-process cases of one world size share one set of processes (spawning is the slow part on a 2-core
machine); each case is still its own test, reading its result from the fixture.
"""

import itertools
import json
import os
import random
import socket
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashcore
from flashcore import distributed as cp

import naive

TIMEOUT_S = 120  # the whole group of processes of one world size; each collective times out after 60 s


# ---------------------------------------------------------------------------- block translation (no processes)

def _band(q_start, q_len, k_start, k_len, left, right):
    """(q_len, k_len) bool, elementwise: global query q_start + i sees key k_start + j."""
    i = torch.arange(q_start, q_start + q_len)[:, None]
    j = torch.arange(k_start, k_start + k_len)[None, :]
    mask = torch.ones(q_len, k_len, dtype=torch.bool)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    return mask


def _render(calls, q_len, k_len):
    """What the op calls compute, elementwise (the op's bottom-right mask on each slice); counts overlaps."""
    seen = torch.zeros(q_len, k_len, dtype=torch.int64)
    for c in calls:
        assert 0 <= c.q0 < c.q1 <= q_len and 0 <= c.k0 < c.k1 <= k_len, c
        assert c.left >= -1 and c.right >= -1, c
        op = naive.visible(c.q1 - c.q0, c.k1 - c.k0, window=(c.left, c.right))
        # tight: every row and every key of a call sees something, so no fully masked piece is computed
        assert op.any(dim=1).all() and op.any(dim=0).all(), c
        seen[c.q0:c.q1, c.k0:c.k1] += op
    assert seen.max() <= 1, "a (query, key) pair is computed twice"
    return seen.bool()


def _check_block_call(q_start, q_len, k_start, k_len, left, right):
    want = _band(q_start, q_len, k_start, k_len, left, right)
    c = cp.block_call(q_start, q_len, k_start, k_len, left, right)
    if c is None:
        assert not want.any(), (q_start, q_len, k_start, k_len, left, right)
        return
    got = _render([c], q_len, k_len)
    assert torch.equal(got, want), (q_start, q_len, k_start, k_len, left, right, c)
    if want.all():
        assert c == (0, q_len, 0, k_len, -1, -1), "a fully visible block must be one unmasked call"


def test_block_call_matches_the_elementwise_mask_exhaustively():
    windows = (-1, 0, 1, 2, 3, 6)
    for q_len, k_len, t, left, right in itertools.product((1, 2, 3, 5), (1, 2, 3, 5), range(-7, 8), windows,
                                                          windows):
        _check_block_call(t, q_len, 0, k_len, left, right)


def test_block_call_matches_the_elementwise_mask_on_random_blocks():
    rng = random.Random(torch.randint(1 << 30, ()).item())
    for _ in range(1500):
        q_len, k_len = rng.randint(1, 40), rng.randint(1, 40)
        left = rng.choice([-1, 0, rng.randint(0, 60)])
        right = rng.choice([-1, 0, rng.randint(0, 60)])
        _check_block_call(rng.randint(0, 200), q_len, rng.randint(0, 200), k_len, left, right)


@pytest.mark.parametrize("zigzag", [True, False])
def test_block_plan_is_exact_for_every_shard_pair(zigzag):
    windows = [(-1, -1), (-1, 0), (0, 0), (2, 1), (1, 3), (5, 0), (7, 2), (-1, 4), (3, -1), (40, 40)]
    for world, chunk in ((1, 3), (2, 3), (3, 2), (4, 3)):
        local = 2 * chunk if zigzag else 3 * chunk
        positions = [torch.tensor([g + i for _, g, n in cp._segments(world, r, local, zigzag) for i in range(n)])
                     for r in range(world)]
        for (left, right), rank, src in itertools.product(windows, range(world), range(world)):
            plan = cp.block_plan(cp._segments(world, rank, local, zigzag), cp._segments(world, src, local, zigzag),
                                 left, right)
            i, j = positions[rank][:, None], positions[src][None, :]
            want = torch.ones(local, local, dtype=torch.bool)
            if left >= 0:
                want &= j >= i - left
            if right >= 0:
                want &= j <= i + right
            assert torch.equal(_render(plan, local, local), want), (world, rank, src, left, right, plan)


def test_block_plan_fuses_zigzag_causal_into_one_call_per_block():
    world, chunk = 4, 5
    seg = [cp._segments(world, r, 2 * chunk, True) for r in range(world)]
    for rank in range(world):
        assert cp.block_plan(seg[rank], seg[rank], -1, 0) == [(0, 2 * chunk, 0, 2 * chunk, -1, 0)]
        for src in range(world):
            if src < rank:    # all local queries see the source's first chunk only
                assert cp.block_plan(seg[rank], seg[src], -1, 0) == [(0, 2 * chunk, 0, chunk, -1, -1)]
            elif src > rank:  # only the local second chunk sees anything: all of the source's shard
                assert cp.block_plan(seg[rank], seg[src], -1, 0) == [(chunk, 2 * chunk, 0, 2 * chunk, -1, -1)]
            assert cp.block_plan(seg[rank], seg[src], -1, -1) == [(0, 2 * chunk, 0, 2 * chunk, -1, -1)]


def test_contiguous_causal_plans_skip_later_shards():
    world, local = 4, 6
    seg = [cp._segments(world, r, local, False) for r in range(world)]
    assert cp.block_plan(seg[2], seg[3], -1, 0) == []
    assert cp.block_plan(seg[2], seg[1], -1, 0) == [(0, local, 0, local, -1, -1)]
    # a window smaller than a shard: rows 0-1 (global 12, 13) see keys 4-5 (global 10, 11) as a band j >= i
    assert cp.block_plan(seg[2], seg[1], 2, 0) == [(0, 2, 4, local, 0, -1)]


def test_merge_is_exact_and_handles_rows_that_see_nothing():
    b, s, h, d = 2, 5, 3, 4
    outs = [torch.randn(b, s, h, d) for _ in range(3)]
    lses = [torch.randn(b, h, s) for _ in range(3)]
    lses[1][:, :, 0] = float("-inf")             # a block where row 0 sees nothing
    for x in lses:
        x[:, :, 1] = float("-inf")               # row 1 sees nothing anywhere
    for o, l in zip(outs, lses):
        o[torch.isinf(l).transpose(1, 2)] = 0.0
    acc_out, acc_lse = torch.zeros(b, s, h, d), torch.full((b, h, s), float("-inf"))
    for o, l in zip(outs, lses):
        cp._merge_(acc_out, acc_lse, o, l, 0, s)
    lse = torch.logsumexp(torch.stack(lses), 0)
    w = [torch.exp(l - lse).nan_to_num(0.0).transpose(1, 2)[..., None] for l in lses]
    ref = sum(wi * o for wi, o in zip(w, outs))
    assert torch.equal(acc_lse.isinf(), lse.isinf()) and not acc_out.isnan().any()
    assert torch.allclose(acc_lse[~lse.isinf()], lse[~lse.isinf()], rtol=1e-6, atol=1e-6)
    assert torch.allclose(acc_out, ref, rtol=1e-5, atol=1e-6) and (acc_out[:, 1] == 0).all()


def test_shard_and_unshard_are_inverse():
    x = torch.arange(2 * 24 * 3).view(2, 24, 3)
    for world, zigzag in ((1, True), (2, True), (3, False), (4, True), (4, False)):
        parts = [cp.shard(x, world, r, zigzag=zigzag) for r in range(world)]
        assert torch.equal(cp.unshard(parts, zigzag=zigzag), x)
    assert cp.shard(x, 3, 1, zigzag=True)[0, :, 0].tolist() == [x[0, i, 0].item() for i in [*range(4, 8),
                                                                                          *range(16, 20)]]
    with pytest.raises(ValueError, match="not divisible by 10"):
        cp.shard(x, 5, 0, zigzag=True)


def test_no_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match="torch.distributed.init_process_group"):
        cp.context_parallel_attention(q, q, q)
    with pytest.raises(RuntimeError, match="torch.distributed.init_process_group"):
        cp.gather(q)


# ------------------------------------------------------------------------------------- multi-process cases

def _full_inputs(seed, b, seqlen, hq, hkv, d, dtype, device):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, seqlen, hq, d), (b, seqlen, hkv, d), (b, seqlen, hkv, d), (b, seqlen, hq, d), (b, hq, seqlen)]
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype if i < 4 else torch.float32)
            for i, s in enumerate(shapes)]


def _case_matches_single_process(rank, world, group=None, *, seed, mode, zigzag=True, causal=False,
                                 window=(-1, -1), softcap=0.0, hq=4, hkv=4, return_lse=False, deterministic=False,
                                 chunk=3, b=2, d=16, dtype=torch.float32, device="cpu", tol=1e-4):
    """Outputs (and lse) and dq, dk, dv of every rank equal the shards of single-process attention."""
    q, k, v, gout, glse = _full_inputs(seed, b, 2 * world * chunk, hq, hkv, d, dtype, device)
    options = dict(causal=causal, window_size=window, softcap=softcap)
    ref_in = [x.detach().float().cpu().requires_grad_() for x in (q, k, v)]  # float32 on the CPU reference
    ref_out, ref_lse = flashcore.attention(*ref_in, return_lse=True, **options)
    ((ref_out * gout.float().cpu()).sum() + ((ref_lse * glse.cpu()).sum() if return_lse else 0)).backward()

    def mine(x):
        return cp.shard(x, world, rank, zigzag=zigzag)

    local = [mine(x).detach().clone().requires_grad_() for x in (q, k, v)]
    res = cp.context_parallel_attention(*local, group, mode=mode, return_lse=return_lse, zigzag=zigzag,
                                        deterministic=deterministic, **options)
    out, lse = res if return_lse else (res, None)
    assert out.shape == local[0].shape and out.dtype == dtype
    loss = (out.float() * mine(gout).float()).sum()
    if return_lse:
        assert lse.shape == (b, hq, local[0].shape[1]) and lse.dtype == torch.float32
        loss = loss + (lse * mine(glse.transpose(1, 2)).transpose(1, 2)).sum()
    loss.backward()
    checks = [("out", out, mine(ref_out)), ("dq", local[0].grad, mine(ref_in[0].grad)),
              ("dk", local[1].grad, mine(ref_in[1].grad)), ("dv", local[2].grad, mine(ref_in[2].grad))]
    if return_lse:
        checks.append(("lse", lse, mine(ref_lse.transpose(1, 2)).transpose(1, 2)))
    if group is None:
        checks.append(("gathered out", cp.gather(out.detach(), zigzag=zigzag), ref_out))
    for name, got, want in checks:
        err = naive.rel_err(got.cpu(), want.cpu())
        assert err <= tol, f"{name}: rel. error {err:.2e} > {tol:.0e}"


def _case_subgroups(rank, world, *, seed):
    """Two independent rings of 2 in a world of 4: peers are group ranks mapped to global ranks."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    _case_matches_single_process(rank % 2, 2, groups[rank // 2], seed=seed + rank // 2, mode="ring", causal=True,
                                 window=(4, 0))
    _case_matches_single_process(rank % 2, 2, groups[rank // 2], seed=seed, mode="all_to_all", causal=True)


def _case_skips_masked_blocks(rank, world, *, seed):
    """Causal: contiguous shards compute rank + 1 blocks and skip the rest; zig-zag computes the same
    (query, key) area on every rank, one call per block."""
    chunk = 3
    for zigzag in (False, True):
        q = torch.randn(1, 2 * chunk, 2, 8, requires_grad=True)
        cp.STATS.clear()
        cp.context_parallel_attention(q, q, q, causal=True, zigzag=zigzag).sum().backward()
        stats = dict(cp.STATS)
        areas = [torch.zeros((), dtype=torch.int64) for _ in range(world)]
        dist.all_gather(areas, torch.tensor(stats["fwd_area"]))
        if zigzag:
            assert stats["fwd_calls"] == stats["bwd_calls"] == world and stats["skipped_blocks"] == 0, stats
            assert len({a.item() for a in areas}) == 1, f"unbalanced zig-zag areas {areas}"
            assert stats["fwd_area"] == (2 * chunk) ** 2 + (world - 1) * 2 * chunk * chunk
        else:
            assert stats["fwd_calls"] == stats["bwd_calls"] == rank + 1, stats
            assert stats["skipped_blocks"] == world - 1 - rank, stats
            assert stats["fwd_area"] == (rank + 1) * (2 * chunk) ** 2


def _case_posts_transfers_before_computing(rank, world, *, seed):
    """The ring posts the next transfer, computes on the shard in hand, then waits: the order of events."""
    from flashcore._backends import ReferenceBackend
    events, saved = [], (cp._exchange, cp._wait, ReferenceBackend.fwd, ReferenceBackend.bwd)

    def exchange(send, recv, ring):
        events.append(f"post{len(send)}")
        return saved[0](send, recv, ring)

    def wait(requests):
        events.append("wait" if requests else "nothing to wait for")
        saved[1](requests)

    cp._exchange, cp._wait = exchange, wait
    ReferenceBackend.fwd = lambda self, *a: (events.append("fwd"), saved[2](self, *a))[1]
    ReferenceBackend.bwd = lambda self, *a: (events.append("bwd"), saved[3](self, *a))[1]
    try:
        q = torch.randn(1, 4, 2, 8, requires_grad=True)
        out = cp.context_parallel_attention(q, q, q)
        fwd, events[:] = list(events), []
        out.sum().backward()
    finally:
        cp._exchange, cp._wait, ReferenceBackend.fwd, ReferenceBackend.bwd = saved
    assert fwd == ["post2", "fwd", "wait"] * (world - 1) + ["fwd", "nothing to wait for"], fwd
    # backward: K/V (2 tensors) and, one step behind, the dK/dV accumulators (2 more); a last hop home
    posts = ["post2"] + ["post4"] * (world - 2) + ["post2"]
    assert events == [e for p in posts for e in (p, "bwd", "wait")] + ["post2", "wait"], events


def _expect(exc, words, fn):
    try:
        fn()
    except exc as e:
        assert words in str(e), f"{exc.__name__} without {words!r}: {e}"
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected {exc.__name__} ({words!r}), got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {exc.__name__} ({words!r}), nothing was raised")


def _case_errors(rank, world, *, seed):
    """Every rank raises (nobody hangs) for mismatches only another rank can see."""
    cpa = cp.context_parallel_attention

    def x(seqlen=4, heads=2, dtype=torch.float32):
        return torch.randn(1, seqlen, heads, 8, dtype=dtype)

    q = x()
    _expect(ValueError, "shards differ across ranks", lambda: cpa(*[x(4 if rank == 0 else 2)] * 3))
    _expect(ValueError, "causal differs across ranks", lambda: cpa(q, q, q, causal=rank == 0))
    _expect(ValueError, "window_right differs", lambda: cpa(q, q, q, window_size=(2, rank)))
    _expect(ValueError, "softmax_scale differs", lambda: cpa(q, q, q, softmax_scale=0.5 + rank))
    _expect(ValueError, "softcap differs", lambda: cpa(q, q, q, softcap=float(rank)))
    _expect(ValueError, "mode differs", lambda: cpa(q, q, q, mode=cp.MODES[rank % 2]))
    _expect(ValueError, "zigzag differs", lambda: cpa(q, q, q, zigzag=rank == 0))
    _expect(ValueError, "must be even", lambda: cpa(*[x(3)] * 3))
    cpa(*[x(3)] * 3, zigzag=False)  # contiguous shards take any length
    _expect(ValueError, "heads of q (3) must be divisible", lambda: cpa(*[x(heads=3)] * 3, mode="all_to_all"))
    _expect(ValueError, "heads of k/v (3)", lambda: cpa(x(heads=6), x(heads=3), x(heads=3), mode="all_to_all"))
    _expect(ValueError, "window_size[0]", lambda: cpa(q, q, q, window_size=(-2, 0)))
    _expect(ValueError, "mode is 'tree'", lambda: cpa(q, q, q, mode="tree"))
    _expect(ValueError, "same tokens", lambda: cpa(q, x(2), x(2)))
    bad = (q.int(), q.int(), q.int()) if rank == 1 else (q, q, q)  # only rank 1's inputs are bad
    _expect(TypeError if rank == 1 else RuntimeError, "q.dtype" if rank == 1 else "rank(s) [1] rejected",
            lambda: cpa(*bad))
    cpa(q, q, q)  # and the group still works afterwards


_CONFIGS = {
    "full": dict(),
    "causal_zigzag": dict(causal=True),
    "causal_contiguous": dict(causal=True, zigzag=False),
    "window_lt_chunk": dict(window=(2, 1)),
    "window_wide": dict(window=(7, 4), zigzag=False),
    "window_right_only": dict(window=(-1, 2)),
    "causal_window": dict(causal=True, window=(4, 0), zigzag=False),
    "causal_window_lt_chunk": dict(causal=True, window=(1, 0)),
    "softcap": dict(causal=True, softcap=3.0),
    "gqa": dict(causal=True, hq=8, hkv=4),
    "gqa_few_kv_heads": dict(hq=4, hkv=2, window=(5, 2)),
    "mqa": dict(causal=True, hq=4, hkv=1, zigzag=False),
    "lse": dict(causal=True, return_lse=True, window=(6, 0)),
    "lse_only_grad_path": dict(return_lse=True, softcap=2.0),
    "deterministic": dict(causal=True, window=(3, 2), deterministic=True),
}


def _cases(world, seed):
    cases = {f"{name}-{mode}": (_case_matches_single_process, dict(config, mode=mode, seed=seed + i))
             for i, (name, config) in enumerate(_CONFIGS.items()) for mode in cp.MODES}
    cases["skips_masked_blocks"] = (_case_skips_masked_blocks, dict(seed=seed))
    cases["posts_transfers_before_computing"] = (_case_posts_transfers_before_computing, dict(seed=seed))
    if world == 2:
        cases["errors"] = (_case_errors, dict(seed=seed))
    if world == 4:
        cases["subgroups"] = (_case_subgroups, dict(seed=seed))
    return cases


def _worker(rank, world, port, backend, cases, outdir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    results = {}
    for name, (fn, kwargs) in cases.items():
        torch.manual_seed(kwargs["seed"] + 1000 * rank)
        try:
            fn(rank, world, **kwargs)
            results[name] = "ok"
        except Exception:  # noqa: BLE001 — reported per case by the parent
            results[name] = traceback.format_exc()
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, backend, cases, outdir):
    """Run `cases` on `world` fresh processes; returns {case: {rank: 'ok' or traceback}}."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, cases, str(outdir))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = {name: {} for name in cases}
    for r in range(world):
        path = os.path.join(outdir, f"rank{r}.json")
        found = json.load(open(path)) if os.path.exists(path) else {}
        for name in cases:
            results[name][r] = found.get(name, f"rank {r} reported nothing (exit code {procs[r].exitcode}, "
                                               f"timeout {TIMEOUT_S} s)")
    return results


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    seed = int(torch.randint(1 << 30, ()).item())
    print(f"distributed cases seed {seed}")
    cache = {}

    def get(world):
        if world not in cache:
            cache[world] = _spawn(world, "gloo", _cases(world, seed), tmp_path_factory.mktemp(f"world{world}"))
        return cache[world]
    return get


def _assert_ok(per_rank):
    failed = {r: msg for r, msg in per_rank.items() if msg != "ok"}
    assert not failed, "\n".join(f"--- rank {r}\n{msg}" for r, msg in failed.items())


_ALL = sorted({(w, name) for w in (2, 4) for name in _cases(w, 0)})


@pytest.mark.parametrize("world,case", _ALL, ids=[f"world{w}-{c}" for w, c in _ALL])
def test_gloo(gloo_results, world, case):
    _assert_ok(gloo_results(world)[case])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more GPUs for NCCL context parallelism")
def test_nccl_gpus(tmp_path):
    world = min(torch.cuda.device_count(), 4)
    cases = {}
    for i, (name, config) in enumerate([("causal", dict(causal=True)), ("window_gqa", dict(window=(5, 2), hkv=2)),
                                        ("contiguous_lse", dict(causal=True, zigzag=False, return_lse=True))]):
        for mode in cp.MODES:
            cases[f"{name}-{mode}"] = (_case_matches_single_process,
                                       dict(config, mode=mode, seed=i, dtype=torch.bfloat16, chunk=64, d=64,
                                            device="cuda", tol=2e-2))
    results = _spawn(world, "nccl", cases, tmp_path)
    for name, per_rank in results.items():
        assert all(msg == "ok" for msg in per_rank.values()), f"{name}:\n" + "\n".join(per_rank.values())
