"""When a wgmma probe fails on the GPU: which MN-major descriptor does the hardware want?

The probe kernels (csrc/cuda/wgmma_probe_kernel.cuh) build MN-major descriptors as the attention kernels do
(LBO = one 64-column panel, SBO = 1024 = the next 8 K rows, base offset 0), or take an override
(flashcore_sm90::wgmma_probe's mn_lbo / mn_sbo / mn_base_offset). This runs every MN-major probe case with the
kernels' descriptor and, where that fails, with other readings of the PTX ISA's stride table (LBO and SBO swapped,
other strides, every base offset), and prints which of them give the right product: the fix to make in
csrc/cuda/ptx/wgmma.cuh (mnmajor_sw128_desc) or the backward's piece offsets, found in one GPU call.

    python tests/wgmma_diagnose.py [--forms KMN,MNMN,RS_MN] [--ns 32,64,128] [--all]

--all tries every candidate even where the kernels' descriptor passes (to see whether others pass too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wgmma_isa import PROBE_FORMS, WGMMA_NS, probe_case, probe_errors, probe_operands, regs_to_matrix  # noqa: E402

ATOM_BYTES = 1024      # 8 rows x 128 B: one 128B swizzle atom
ROW_BYTES = 128        # one swizzled row
BASE_OFFSETS = 8       # the descriptor's 3-bit matrix base offset
MN_FORMS = [f for f, (ta, tb, _) in PROBE_FORMS.items() if ta or tb]
KERNELS = None         # the override value meaning "the kernels' own descriptor"

# probe(a, b, n, b_col0, trans_a, trans_b, reg_a, mn_lbo, mn_sbo, mn_base_offset) -> (128, n/2) fp32 registers
Probe = Callable[..., torch.Tensor]


def candidates(panel_bytes: int) -> list[tuple[int, int, int]]:
    """(LBO, SBO, base offset) readings to try: the kernels' (panel, atom) first, then swapped, then other strides
    the stride table could mean (a row, two atoms), each with every base offset."""
    strides = [(panel_bytes, ATOM_BYTES), (ATOM_BYTES, panel_bytes), (panel_bytes, 2 * ATOM_BYTES),
               (ROW_BYTES, ATOM_BYTES), (2 * ATOM_BYTES, ATOM_BYTES), (ATOM_BYTES, ATOM_BYTES)]
    seen, out = set(), []
    for lbo, sbo in strides:
        for base in range(BASE_OFFSETS):
            if (lbo, sbo, base) not in seen:
                seen.add((lbo, sbo, base))
                out.append((lbo, sbo, base))
    return out


def run_case(probe: Probe, n: int, form: str, dtype: torch.dtype, override) -> str:
    """'ok', 'k of m wrong', or the error the launch raised."""
    a, b, a_logical, b_logical, _, _, col0 = probe_operands(n, form, dtype, None)
    trans_a, trans_b, reg_a = PROBE_FORMS[form]
    lbo, sbo, base = override if override is not None else (-1, -1, 0)
    try:
        regs = probe(a, b, n, col0, bool(trans_a), bool(trans_b), bool(reg_a), lbo, sbo, base)
    except Exception as exc:  # noqa: BLE001 - a rejected descriptor is an answer too
        return f"error: {str(exc).splitlines()[0][:100]}"
    bad, _ = probe_errors(regs_to_matrix(regs, n), a_logical, b_logical)
    return "ok" if not bad.any() else f"{bad.sum().item()} of {bad.numel()} wrong"


def diagnose(probe: Probe, cases: Iterable[tuple[int, str]], dtype: torch.dtype = torch.bfloat16,
             try_all: bool = False, limit: int | None = None) -> list[dict]:
    """One row per case: the kernels' result and the candidates that give the right product."""
    rows = []
    for n, form in cases:
        k = probe_case(n, form)[0]
        row = {"n": n, "form": form, "kernels": run_case(probe, n, form, dtype, KERNELS), "passing": []}
        if row["kernels"] != "ok" or try_all:
            for cand in candidates(k * ROW_BYTES)[:limit]:
                if run_case(probe, n, form, dtype, cand) == "ok":
                    row["passing"].append(cand)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", default=",".join(MN_FORMS), help=f"of {MN_FORMS}")
    parser.add_argument("--ns", default=",".join(map(str, WGMMA_NS)))
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--all", action="store_true", help="try the candidates where the kernels' descriptor passes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("wgmma_diagnose: no CUDA GPU visible; it runs the probes on a GPU (CPU model: tests/test_cuda_emu_ptx.py)")
        return 2
    from test_build_checks import find_extension  # the built library, loaded as tests/test_cuda_sm90.py does
    torch.ops.load_library(str(find_extension()))
    ops = torch.ops.flashcore_sm90

    def probe(a, b, *rest):
        out = ops.wgmma_probe(a.cuda(), b.cuda(), *rest)
        torch.cuda.synchronize()
        return out

    cases = [(n, f) for f in args.forms.split(",") for n in map(int, args.ns.split(","))]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    t0 = time.time()
    rows = diagnose(probe, cases, dtype, args.all)
    failing = 0
    for row in rows:
        failing += row["kernels"] != "ok"
        passing = ", ".join(f"(lbo={l}, sbo={s}, base={b})" for l, s, b in row["passing"][:6]) or "-"
        print(f"{row['form']:>6} N={row['n']:<4} kernels' descriptor: {row['kernels']:<24} "
              f"passing overrides: {passing}")
    print(f"{failing} of {len(rows)} MN-major cases fail with the kernels' descriptor ({time.time() - t0:.1f} s)")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
