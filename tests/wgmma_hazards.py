"""Register hazards of asynchronous wgmmas, read from SASS (shared by tests/test_{fwd,bwd}_sm90_sass.py).

Between an HGMMA and the WARPGROUP.DEPBAR that completes its group, the tensor core still reads the group's
register A fragments and owns its accumulators (PTX ISA, wgmma.mma_async: neither may be touched before
wgmma.wait_group). The kernels pin those registers with fence_operands so that ptxas neither reuses them nor moves
their reads and writes across the wait; this check reads the SASS for the result: no instruction other than an
HGMMA of the same kind writes a register of a group that is still in flight. Straight-line reading of the
listing: an instruction between the issue and the completing wait on any path counts.

Groups: the last HGMMA of a commit group carries `gsb0`; `WARPGROUP.DEPBAR.LE gsb0, N` waits until at most N groups
are pending, so group G is complete at such a wait once at least N groups were committed after it.
"""

from __future__ import annotations

import re

_HGMMA = re.compile(r"HGMMA\.64x(\d+)x\d+\S* R(\d+), (?:R(\d+), )?")
_WAIT = re.compile(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x([0-9a-f]+)")
_A_REGS = 4  # a register A fragment: four 32-bit registers (8 16-bit values) per thread


def written_registers(instruction: str) -> set[int]:
    """The general registers an instruction writes, for the opcodes these kernels contain: the first operand when
    it is a register (stores, reductions, barriers and TMA name an address or nothing there), 2 or 4 of them for
    64- / 128-bit results, N/2 for an HGMMA's accumulators."""
    op, _, rest = instruction.partition(" ")
    first = rest.split(",")[0].strip()
    m = re.fullmatch(r"R(\d+)", first)
    if m is None or op.startswith(("ST", "RED", "BAR", "SYNCS", "WARPGROUP", "UTMA", "MEMBAR")):
        return set()
    if (h := _HGMMA.match(instruction)) is not None:
        width = int(h.group(1)) // 2
    elif ".128" in op:
        width = 4
    elif ".64" in op or ".WIDE" in op:
        width = 2
    else:
        width = 1
    return set(range(int(m.group(1)), int(m.group(1)) + width))


def wgmma_register_hazards(code: list[str]) -> list[str]:
    """Every write to a register of an in-flight wgmma group (A fragment or accumulator) by anything but a later
    HGMMA chaining the same accumulators, and every group no wait completes. `code`: parse_sass's instruction list."""
    groups = []  # (index of the group's last HGMMA, A registers, accumulator registers)
    a_regs: set[int] = set()
    acc_regs: set[int] = set()
    for i, ins in enumerate(code):
        if (h := _HGMMA.match(ins)) is None:
            continue
        acc_regs |= set(range(int(h.group(2)), int(h.group(2)) + int(h.group(1)) // 2))
        if h.group(3) is not None:
            a_regs |= set(range(int(h.group(3)), int(h.group(3)) + _A_REGS))
        if "gsb0" in ins:
            groups.append((i, a_regs, acc_regs))
            a_regs, acc_regs = set(), set()
    problems = []
    for end, a, acc in groups:
        later = 0
        for ins in code[end + 1:]:
            if (h := _HGMMA.match(ins)) is not None:
                later += "gsb0" in ins
                # a later HGMMA may chain the accumulators; it must not overwrite the A registers
                bad = written_registers(ins) & a
            else:
                bad = written_registers(ins) & (a | acc)
            if bad:
                problems.append(f"{ins!r} writes R{min(bad)} of the wgmma group ending at instruction {end}")
            if (w := _WAIT.match(ins)) is not None and later >= int(w.group(1), 16):
                break
        else:
            problems.append(f"no WARPGROUP.DEPBAR completes the wgmma group ending at instruction {end}")
    return problems
