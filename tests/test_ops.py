"""The custom ops flashcore::fwd / flashcore::bwd: schemas, opcheck, autograd, torch.compile."""

import pytest
import torch

import flashcore
from flashcore import _ext, _ops, _schema

import naive


def _dense_args(dtype=torch.float32, grad=True, b=2, sq=24, sk=40, hq=4, hkv=2, d=16, causal=True):
    q = torch.randn(b, sq, hq, d, dtype=dtype, requires_grad=grad)
    k = torch.randn(b, sk, hkv, d, dtype=dtype, requires_grad=grad)
    v = torch.randn(b, sk, hkv, d, dtype=dtype, requires_grad=grad)
    return (q, k, v, None, None, sq, sk, d ** -0.5, causal, -1, 0 if causal else -1, 0.0, False)


def _varlen_args(dtype=torch.float32, grad=True):
    lens = [5, 17, 1, 9]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lens), 4, 16, dtype=dtype, requires_grad=grad)
    k = torch.randn(sum(lens), 1, 16, dtype=dtype, requires_grad=grad)
    v = torch.randn(sum(lens), 1, 16, dtype=dtype, requires_grad=grad)
    return (q, k, v, cu, cu, max(lens), max(lens), 0.25, False, 3, 2, 1.5, False)


def test_schemas_are_the_shared_strings():
    """C++ (when built) and Python define the ops from the same text; this catches drift."""
    fwd = str(torch.ops.flashcore.fwd.default._schema)
    bwd = str(torch.ops.flashcore.bwd.default._schema)
    assert fwd == "flashcore::" + _schema.FWD_SCHEMA
    assert bwd == "flashcore::" + _schema.BWD_SCHEMA


def test_kernel_head_dims_agree_between_python_and_cpp():
    """The Python check (_backends.KERNEL_HEAD_DIMS) and the C++ host check (csrc/attention_args.h kHeadDims)
    admit the same head dims, so neither side rejects what the other accepts."""
    import pathlib
    import re

    from flashcore import _backends

    header = (pathlib.Path(__file__).parents[1] / "csrc" / "attention_args.h").read_text()
    match = re.search(r"kHeadDims\[\]\s*=\s*\{([^}]*)\}", header)
    assert match, "kHeadDims not found in csrc/attention_args.h"
    assert tuple(int(x) for x in match.group(1).split(",")) == _backends.KERNEL_HEAD_DIMS


def test_schemas_come_from_the_extension_when_it_is_built():
    if _ext.MODULE is None:
        pytest.skip(f"extension not built here ({_ext.LOAD_ERROR}); CI builds it")
    assert _ops.SCHEMAS_FROM_EXTENSION


@pytest.mark.parametrize("make", [_dense_args, _varlen_args], ids=["dense", "varlen"])
def test_opcheck_fwd(make):
    torch.library.opcheck(torch.ops.flashcore.fwd.default, make())


@pytest.mark.parametrize("make", [_dense_args, _varlen_args], ids=["dense", "varlen"])
@pytest.mark.parametrize("with_dlse", [False, True])
def test_opcheck_bwd(make, with_dlse):
    args = make(grad=False)
    q, k, v, cu_q, cu_k = args[:5]
    out, lse = torch.ops.flashcore.fwd(*args)
    dlse = torch.randn_like(lse) if with_dlse else None
    bwd_args = (torch.randn_like(out), q, k, v, out, lse, dlse, cu_q, cu_k) + args[5:]
    torch.library.opcheck(torch.ops.flashcore.bwd.default, bwd_args)


def test_backward_op_is_what_autograd_runs():
    """register_autograd wires fwd's gradient to the bwd op (not to autograd through the reference)."""
    q, k, v = _dense_args(dtype=torch.float64)[:3]
    calls = []
    real = torch.ops.flashcore.bwd

    class Spy:
        def __call__(self, *a):
            calls.append(1)
            return real(*a)

    _ops.torch.ops.flashcore.bwd = Spy()  # torch.ops namespaces allow attribute replacement
    try:
        flashcore.attention(q, k, v, causal=True).sum().backward()
    finally:
        _ops.torch.ops.flashcore.bwd = real
    assert calls == [1]


def test_lse_only_loss_has_gradients():
    q, k, v = _dense_args(dtype=torch.float64)[:3]
    _, lse = flashcore.attention(q, k, v, causal=True, return_lse=True)
    _, ref_lse = naive.attention(q, k, v, causal=True)
    dq, dk, dv = torch.autograd.grad(lse.sum(), (q, k, v))
    ref_dq, ref_dk = torch.autograd.grad(ref_lse.sum(), (q, k))
    assert naive.rel_err(dq, ref_dq) < 1e-5 and naive.rel_err(dk, ref_dk) < 1e-5
    assert (dv == 0).all()  # lse does not depend on v


def _loss(q, k, v):
    out, lse = flashcore.attention(q, k, v, causal=True, softcap=2.0, return_lse=True)
    return (out.float() ** 2).sum() + lse.sum()


def test_torch_compile_fullgraph_forward_and_backward():
    q, k, v = _dense_args(dtype=torch.float32)[:3]
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_loss = _loss(q, k, v)
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_torch_compile_inductor_in_a_training_step():
    """A small attention block compiled with the default backend, trained for a few steps."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(32, 3 * 32)
    opt = torch.optim.SGD(proj.parameters(), lr=0.1)

    def step(x):
        q, k, v = proj(x).view(2, 16, 3, 4, 8).unbind(2)
        return flashcore.attention(q, k, v, causal=True).pow(2).mean()

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(2, 16, 32)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = compiled(x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_torch_compile_varlen():
    args = _varlen_args()
    q, k, v, cu_q, cu_k, mq, mk = args[:7]

    def f(q, k, v):
        return flashcore.attention_varlen(q, k, v, cu_q, cu_k, mq, mk, window_size=(3, 2)).sum()

    compiled = torch.compile(f, backend="aot_eager")
    assert torch.allclose(compiled(q, k, v), f(q, k, v), rtol=1e-5)
