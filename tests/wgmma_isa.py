"""The wgmma fragment figures of the PTX ISA written in Python (a copy independent of csrc/cuda/ptx/layout.cuh),
and the cases of the wgmma probe kernels (csrc/cuda/wgmma_probe_kernel.cuh), shared by the CPU model's tests
(tests/test_cuda_emu_ptx.py) and the GPU tests (tests/test_cuda_sm90.py): the same kernels and cases on both."""

from __future__ import annotations

import torch

WGMMA_NS = [32, 64, 80, 96, 112, 128, 176, 192, 256]  # wgmma.cuh's Wgmma<N> and wgmma_mn.cuh's N = 32
# (trans_a, trans_b, register A) of the probe kernel: the forms the attention kernels use (wgmma_probe_kernel.cuh).
PROBE_FORMS = {"KK": (0, 0, 0), "KMN": (0, 1, 0), "MNMN": (1, 1, 0), "RS_MN": (0, 1, 1)}
# (NS, D) of the chain probe (the forward consumer's S = Q K^T then O = P V): every N as NS, every head dim as D.
CHAIN_PAIRS = [(64, 64), (80, 96), (96, 128), (112, 192), (128, 128), (176, 256), (192, 96), (256, 64)]


def acc_coord(t: int, i: int) -> tuple[int, int]:
    """Figure "WGMMA .m64nNk16 register fragment layout for accumulator matrix D": warp w owns rows 16w..16w+15;
    lane l, register i: row l/4 (+8 for i%4 in {2,3}), column 8*(i/4) + 2*(l%4) + i%2."""
    w, l = divmod(t, 32)
    return 16 * w + l // 4 + 8 * ((i % 4) // 2), 8 * (i // 4) + 2 * (l % 4) + i % 2


def a_coord(t: int, r: int, h: int) -> tuple[int, int]:
    """Figure "... register fragment layout for matrix A" (16-bit): a0..a7 in 4 registers; a0,a1: row l/4, cols
    2(l%4)+{0,1}; a2,a3: row +8; a4,a5: cols +8; a6,a7: row +8, cols +8."""
    w, l = divmod(t, 32)
    return 16 * w + l // 4 + 8 * (r % 2), 8 * (r // 2) + 2 * (l % 4) + h


def regs_to_matrix(regs: torch.Tensor, n: int) -> torch.Tensor:
    """(128 threads, n/2 registers) -> the 64 x n accumulator; NaN where no register landed."""
    regs = regs.cpu()
    d = torch.full((64, n), float("nan"), dtype=torch.float32)
    for t in range(128):
        for i in range(n // 2):
            d[acc_coord(t, i)] = regs[t, i]
    return d


def chained_matmul(a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
    """A (M x K) B (K x N) the way the accumulator sees it: exact per K = 16 step, rounded to fp32 after each."""
    a, b = a.cpu(), b.cpu()
    d = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32) if init is None else init.clone()
    for k0 in range(0, a.shape[1], 16):
        d = (d.double() + a[:, k0:k0 + 16].double() @ b[k0:k0 + 16].double()).float()
    return d


# Tensor-core fp32 accumulation is not IEEE-exact (FMA ordering, alignment inside a K = 16 step): a per-element
# bound of 2^-17 of sum |a| |b| covers it with room; a descriptor or layout fault moves whole values (errors
# ~ |a| |b|).
PROBE_REL_BOUND = 2.0 ** -17


def probe_errors(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(elements outside the bound, want): got (64 x N, fp32, from registers) against A (64 x K) @ B (K x N) in
    float64, elementwise; an element never written (NaN) is outside."""
    a64, b64 = a.cpu().double(), b.cpu().double()
    want = a64 @ b64
    bound = PROBE_REL_BOUND * (a64.abs() @ b64.abs()) + 1e-30
    return ~((got.double() - want).abs() <= bound), want


def check_probe_result(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Asserts probe_errors finds nothing, naming the wrong rows and columns (the pattern points at the fault)."""
    bad, want = probe_errors(got, a, b)
    assert not got.isnan().any(), f"{what}: {got.isnan().sum().item()} accumulator elements never written"
    if bad.any():
        rows = sorted(set(bad.nonzero()[:, 0].tolist()))
        cols = sorted(set(bad.nonzero()[:, 1].tolist()))
        r, c = bad.nonzero()[0].tolist()
        more_rows, more_cols = "..." if len(rows) > 16 else "", "..." if len(cols) > 16 else ""
        raise AssertionError(f"{what}: {bad.sum().item()} of {bad.numel()} elements wrong, in rows {rows[:16]}"
                             f"{more_rows} and columns {cols[:16]}{more_cols}; first ({r}, {c}): got "
                             f"{got[r, c].item():.6g}, want {want[r, c].item():.6g}")


def probe_case(n: int, form: str) -> tuple[int, int, int]:
    """(K, b_cols, b_col0) per form, chosen to exercise what the kernels do: K-major slices in two panels;
    MN-major pieces starting 32 columns into a panel (N = 32), in the second panel (N = 64), spanning panels (LBO)."""
    trans_a, trans_b, _ = PROBE_FORMS[form]
    if not trans_b:
        return 128, n, 0
    k = 128 if trans_a else 64
    if n == 32:
        return k, 64, 32
    if n == 64:
        return k, 128, 64
    return k, -(-n // 64) * 64, 0


def probe_operands(n: int, form: str, dtype: torch.dtype, gen: torch.Generator):
    """Random stored operands of a probe case and their logical (64 x K) A and (K x N) B."""
    trans_a, trans_b, _ = PROBE_FORMS[form]
    k, b_cols, col0 = probe_case(n, form)
    a = random_16bit((k, 64) if trans_a else (64, k), dtype, gen)     # stored: MN-major [K][M] or K-major [M][K]
    b = random_16bit((k, b_cols) if trans_b else (n, k), dtype, gen)  # stored: MN-major [K][cols] or K-major [N][K]
    a_logical = a.T if trans_a else a
    b_logical = b[:, col0:col0 + n] if trans_b else b.T
    return a, b, a_logical, b_logical, k, b_cols, col0


def random_16bit(shape, dtype, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen).mul(2).to(dtype)
