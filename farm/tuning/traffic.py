"""The estimate's memory bound: bytes each cache level receives from the one below, over bandwidth.

Per statement of a lowered nest, the bytes each cache level receives from the one below, over the
bandwidth of the level they come from; the slowest level bounds (they stream at once). A level
receives nothing when everything the kernel touches fits in it (a timed kernel runs back to back);
otherwise, for the largest innermost block of loops whose footprint fits, the footprint of the
block one loop larger, once per iteration of the loops outside it. Which buffers are memory at all
(``in_memory``) is shared with the core bound in ``farm/tuning/estimate.py``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from farm.compiler import arith
from farm.compiler.ir import BufferLoad, For, PrimFunc, Store
from farm.te.expr import Expr, Var, free_vars, walk
from farm.tuning.constants import EstimateConstants

LINE = 64  # cache line bytes: the unit caches move

NestStore = tuple[Store, list[For], int]  # a store, its loops (outermost first), guards around it


def elem_bytes(dtype: str) -> int:
    """Bytes of one element of ``dtype``."""
    return 8 if "64" in dtype else 2 if "16" in dtype else 1 if "8" in dtype else 4


def regfile_bytes(c: EstimateConstants, lanes: int) -> int:
    """Bytes of the target's vector register file (f32 lanes x 4 bytes per register)."""
    return c.vector_registers * lanes * 4


def in_memory(buf: Any, regfile: int) -> bool:
    """Whether a buffer lives in memory: every global one, and a local one larger than the vector
    register file (a per-thread packed panel of B is a local allocation, hundreds of KiB, read
    from the caches like any other; a local accumulator tile is registers)."""
    return buf.scope != "local" or buf.size * elem_bytes(buf.dtype) > regfile


class Access:
    """One buffer a statement reads or writes: its footprint for every innermost block of loops."""

    def __init__(self, buf: Any, indices: Sequence[Expr], loops: list[For], ranges: dict[Var, tuple[int, int]],
                 write: bool) -> None:
        self.buf, self.write = buf, write
        linear: list[dict[Var, int]] = []  # per index: |coefficient| of each loop variable
        opaque: list[list[tuple[Expr, int]]] = []  # per index: non-linear terms (fused loops' % and //)
        for e in indices:
            try:
                lin, _ = arith.linear(e, ranges)
                items = [(a, abs(c)) for a, c in lin.items() if c]
            except Exception:  # not linearisable: treat the whole index as one opaque term
                items = [(e, 1)]
            linear.append({a: c for a, c in items if isinstance(a, Var)})
            opaque.append([(a, c) for a, c in items if not isinstance(a, Var)])
        isz = elem_bytes(buf.dtype)
        shape = list(buf.shape) + [1] * (len(indices) - len(buf.shape))
        n = len(loops)
        spans = [1] * len(indices)
        inner: dict[Var, tuple[int, int]] = {}
        self.bytes: list[float] = []  # [m]: bytes touched by the innermost m loops (cache-line granular)
        for m in range(n + 1):
            if m:
                lp = loops[n - m]
                inner[lp.var] = (0, lp.extent - 1)
                spans = [s + lin.get(lp.var, 0) * (lp.extent - 1) for s, lin in zip(spans, linear)]
            full = list(spans)
            for d, terms in enumerate(opaque):
                for atom, c in terms:
                    if free_vars(atom) & inner.keys():
                        b = arith.bounds(atom, {**{v: (0, 0) for v in ranges}, **inner})
                        full[d] += c * (b[1] - b[0]) if b else shape[d] - 1
            full = [min(x, dim) for x, dim in zip(full, shape)]
            self.bytes.append(float(line_bytes(full, shape, isz)))


def line_bytes(full: list[int], shape: list[int], isz: int) -> int:
    """Bytes of the cache lines a box of ``full`` elements per dimension touches in a row-major
    buffer of ``shape``: runs of contiguous elements, each rounded up to whole lines. Where the
    inner dimensions are covered whole, the rows of the next one are back to back: a 3x3 filter's
    rows are 12 bytes each but contiguous (counting a line per row overstated conv2d weights 5x)."""
    if not full:
        return isz
    k = len(full) - 1
    run = full[k]
    while k > 0 and full[k] == shape[k]:
        k -= 1
        run *= full[k]
    return math.prod(full[:k]) * math.ceil(run * isz / LINE) * LINE


def accesses(store: Store, loops: list[For], ranges: dict[Var, tuple[int, int]],
             regfile: int) -> list[Access]:
    """The statement's buffers in memory (``in_memory``; local tiles up to ``regfile`` bytes are
    registers)."""
    out = []
    if in_memory(store.buffer, regfile):
        out.append(Access(store.buffer, store.indices, loops, ranges, True))
    seen = set()
    for e in walk(store.value):
        if isinstance(e, BufferLoad) and in_memory(e.buffer, regfile) and (e.buffer, id(e)) not in seen:
            seen.add((e.buffer, id(e)))
            out.append(Access(e.buffer, e.indices, loops, ranges, False))
    return out


def level_traffic(acc: list[Access], loops: list[For], capacity: int) -> float:
    """Bytes a cache of ``capacity`` receives from below over the statement's loops."""
    n = len(loops)
    if not acc:
        return 0.0
    total = [sum(a.bytes[m] * (2 if a.write else 1) for a in acc) for m in range(n + 1)]
    fit = max((m for m in range(n + 1) if total[m] <= capacity), default=-1)
    if fit >= n:
        return total[n]
    block = fit + 1  # the smallest block that does not fit: its footprint streams through, once per outer trip
    return total[block] * math.prod(lp.extent for lp in loops[: n - block])


def memory_seconds(stores: list[NestStore], func: PrimFunc, c: EstimateConstants, cores: int,
                   lanes: int) -> float:
    """Bytes moved into L1, L2 and L3 over the bandwidth of the level each comes from."""
    regs = regfile_bytes(c, lanes)
    bufs = {id(b): b for b in [*func.params, *func.globals] if getattr(b, "scope", "") != "local"}
    for st, _, _ in stores:  # local buffers in memory (per-thread packed panels)
        for b in [st.buffer] + [e.buffer for e in walk(st.value) if isinstance(e, BufferLoad)]:
            if b.scope == "local" and in_memory(b, regs):
                bufs[id(b)] = b
    ws = sum(b.size * elem_bytes(b.dtype) for b in bufs.values())
    levels = [(cap, src) for cap, src in zip(c.caches, ("L2", "L3", "DRAM")) if cap > 0]
    # With no L3 an L2 miss goes to DRAM; the "L3" bandwidth reads as DRAM then (gbps()).
    ns = 0.0
    for st, loops, _ in stores:
        ranges: dict[Var, tuple[int, int]] = {lp.var: (0, lp.extent - 1) for lp in loops}
        acc = accesses(st, loops, ranges, regs)
        # The levels stream at once (hardware prefetch moves L3->L2 while L2->L1 runs): the slowest
        # bounds. Their sum overstated depthwise conv2d's best config by a third (61 us for 45).
        per = [level_traffic(acc, loops, cap) / c.gbps(src if src != "L3" or c.caches[2] else "DRAM")
               for cap, src in levels if ws > cap]
        t = max(per, default=0.0)
        ns += t / busy_cores(loops, cores)
    return ns * 1e-9


def busy_cores(loops: list[For], cores: int) -> float:
    """Cores a statement keeps busy: its parallel loop's chunks over the cores."""
    par = max((lp.extent for lp in loops if lp.kind == "parallel"), default=0)
    if not par:
        return 1.0
    return par / math.ceil(par / cores)
