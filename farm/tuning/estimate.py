"""The analytic estimate: one call's time from the lowered loop nest and the device's constants.

No training: it ranks a space before anything is measured (the xgb tuner's cold start) and is
the base margin the trees learn the error of. Two bounds, the larger wins:

* **core**: the main statement's register body (the innermost loops LLVM flattens: unrolled,
  vectorized and short serial ones). Its FMAs issue at the device's rate for their vector width
  (a 12-lane chunk computes as 16 lanes; Zen 4 issues 512-bit FMAs at half its 256-bit rate);
  its independent accumulation chains must cover latency x rate (``fmas_in_flight``) when they
  run on across bodies; its loads issue at the L1's rate for their width, a non-power-of-two
  vector in power-of-two pieces put back together (lane by lane when masked), a load that
  straddles two cache lines as two (a thread's packed panel, a local buffer larger than the
  register file, is read like global memory); accumulators that, beside a broadcast and one
  loaded vector per chunk, outnumber the vector registers spill, steeply. A broadcast that
  output positions share across the body's reduction steps (a stencil's x + rx) is held in a
  register; when the held values do not fit beside the accumulators, each use reloads it.
  The three overlap imperfectly: the body takes their 4-norm (``_overlap``), not their maximum.
  The copies around the main statement (padding, write-back) add a vector load and store per
  element vector.
* **memory**: the bytes each cache level receives from the one below, over the bandwidth of the
  level they come from (``farm/tuning/traffic.py``).

``prior`` is the estimated fraction of the device's peak (flops over time, over every core's
best FMA rate), so it ranks compute-bound and memory-bound operators alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from farm.compiler import arith
from farm.compiler.ir import Allocate, Block, BufferLoad, For, IfThenElse, PrimFunc, Stmt, Store, expr_children
from farm.te.expr import Expr, Select, Var, free_vars, walk
from farm.tuning.constants import EstimateConstants
from farm.tuning.traffic import LINE, NestStore, busy_cores, elem_bytes, in_memory, memory_seconds, regfile_bytes

# LLVM fully unrolls a short constant-trip loop around a small body; this many
# vector operations is about where its O3 full-unroll threshold stops (a compiler
# setting, not a property of the machine).
UNROLL_BODY = 64
GUARD_EFF = 0.8  # a body under a tail guard runs a masked or branchy variant
OVERLAP_P = 4.0  # see _overlap



def nest_stores(s: Stmt, stack: list[For] | None = None, guards: int = 0,
                out: list[NestStore] | None = None, pads: int = 0) -> list[NestStore]:
    """Every store of a nest with its enclosing loops and the number of guards around it.

    A guard that only skips a local tile's padding counts only where a load under it could leave
    its buffer by vector lanes: the code generator drops such a guard and computes the padding
    (which the loop extents already include), masking just the vector loads that could stray
    (``arith.within``, as the code generator decides). A GEMM tile over a packed, padded B (24
    columns of 512) then runs unguarded, as it does."""
    stack = stack or []
    out = [] if out is None else out
    if isinstance(s, For):
        nest_stores(s.body, stack + [s], guards, out, pads)
    elif isinstance(s, Store):
        out.append((s, stack, guards + (pads if pads and _may_stray(s, stack) else 0)))
    elif isinstance(s, IfThenElse):
        pad = s.tile_pad and s.orelse is None
        g, p = (guards, pads + 1) if pad else (guards + 1, pads)
        nest_stores(s.then, stack, g, out, p)
        if s.orelse is not None:
            nest_stores(s.orelse, stack, g, out, p)
    elif isinstance(s, Allocate):
        nest_stores(s.body, stack, guards, out, pads)
    elif isinstance(s, Block):
        for x in s.stmts:
            nest_stores(x, stack, guards, out, pads)
    return out


def _may_stray(st: Store, loops: list[For]) -> bool:
    """Whether a vector load of the statement may index past its buffer over the loops' full
    ranges (the code generator masks it; a scalar load it clamps, a min and a max)."""
    vvars = {lp.var for lp in loops if lp.kind == "vectorize"}
    ranges: dict[Var, tuple[int, int]] = {lp.var: (0, lp.extent - 1) for lp in loops}
    return any(isinstance(e, BufferLoad) and any(vvars & free_vars(i) for i in e.indices)
               and not arith.within(e.indices, e.buffer.shape, ranges) for e in walk(st.value))


def mults(e: Expr) -> int:
    return sum(1 for x in walk(e) if getattr(x, "op", None) == "*" and x.dtype.startswith("float"))


def work(x: NestStore) -> float:
    return math.prod(lp.extent for lp in x[1]) * max(1, mults(x[0].value))


def coefs(idx: Sequence[Expr], ranges: dict[Var, tuple[int, int]]) -> list[dict[Var, int]]:
    """Per index, the coefficient of each loop variable (linear terms only)."""
    out = []
    for e in idx:
        try:
            terms, _ = arith.linear(e, ranges)
        except Exception:  # an index arith cannot linearise: no stride information for it
            terms = {}
        out.append({k: v for k, v in terms.items() if isinstance(k, Var)})
    return out


def _pieces(w: int) -> list[int]:
    """The power-of-two loads LLVM splits a ``w``-lane load into (14: 8, 4, 2)."""
    return [1 << b for b in range(w.bit_length() - 1, -1, -1) if w >> b & 1]


def _pow2(w: int) -> int:
    return 1 << max(0, (w - 1).bit_length())


@dataclass(frozen=True)
class Estimate:
    """The estimate of one config and the factors behind it (the cost model's pipeline features)."""

    seconds: float
    core_s: float
    memory_s: float
    chains: int
    vec_eff: float  # flops per FMA issue slot against the widest FMA's
    par_eff: float  # cores kept busy by the main statement, of all
    lat_eff: float  # issue time over max(issue, latency chain)
    spill_eff: float
    prior: float  # flops / seconds / (peak x cores)

    def row(self) -> list[float]:
        mem = math.log2(self.memory_s / self.core_s) if self.memory_s > 0 and self.core_s > 0 else -8.0
        return [math.log2(self.chains) if self.chains > 0 else -1.0, self.vec_eff, self.par_eff, self.lat_eff,
                self.spill_eff, self.prior, mem]


NEUTRAL = Estimate(0.0, 0.0, 0.0, 0, 1.0, 1.0, 1.0, 1.0, 1.0)


def estimate(func: PrimFunc, c: EstimateConstants, cores: int, lanes: int, flops: float = 0.0,
             stores: list[NestStore] | None = None) -> Estimate:
    """The estimate of a lowered kernel on a device (``lanes``: the target's f32 vector lanes;
    ``stores``: ``nest_stores(func.body)`` when the caller has them)."""
    stores = nest_stores(func.body) if stores is None else stores
    if not stores or lanes <= 1:
        return NEUTRAL
    main, loops, guards = max(stores, key=work)
    ranges: dict[Var, tuple[int, int]] = {lp.var: (0, lp.extent - 1) for lp in loops}
    init = next((lp for st, lp, _ in stores if st is not main and st.buffer is main.buffer), [])
    scope = next((n for n, (a, b) in enumerate(zip(loops, init)) if a is not b), min(len(loops), len(init)))
    core = _core(main, loops, ranges, guards, c, lanes, scope)
    par = busy_cores(loops, cores)
    other = sum(_copy_seconds(s, lp, c, lanes) / busy_cores(lp, cores) for s, lp, _ in stores if s is not main)
    core_s = core.seconds / par + other
    mem_s = memory_seconds(stores, func, c, cores, lanes)
    total = max(core_s, mem_s)
    useful = flops or 2.0 * max(1, mults(main.value)) * math.prod(lp.extent for lp in loops)
    prior = useful / max(total * 1e9, 1e-12) / (c.peak_flops_per_ns * cores)
    return Estimate(total, core_s, mem_s, core.chains, core.vec_eff, par / cores, core.lat_eff, core.spill_eff,
                    min(1.0, prior))


@dataclass(frozen=True)
class _Core:
    seconds: float
    chains: int
    vec_eff: float
    lat_eff: float
    spill_eff: float


def _core(main: Store, loops: list[For], ranges: dict[Var, tuple[int, int]], guards: int,
          c: EstimateConstants, lanes: int, scope: int = 0) -> _Core:
    """One core's time for the main statement: its register body's FMA issue, latency and loads.

    ``scope``: the loops outside the accumulators' lifetime (those around their initial store):
    each of their iterations starts fresh chains."""
    out_vars: set[Var] = set()
    for oc in coefs(main.indices, ranges):
        out_vars |= {v for v, k in oc.items() if k}
    flat: list[For] = []
    size = 1
    for lp in reversed(loops):
        ok = lp.kind in ("unroll", "vectorize") or (lp.kind == "serial" and lp.extent * size <= UNROLL_BODY)
        if not ok:
            break
        flat.append(lp)
        size *= math.ceil(lp.extent / lanes) if lp.kind == "vectorize" else lp.extent
    vloop = next((lp for lp in flat if lp.kind == "vectorize"), None)
    others = [lp for lp in flat if lp is not vloop]
    n_other = math.prod(lp.extent for lp in others)
    chains_other = math.prod(lp.extent for lp in others if lp.var in out_vars)
    # The code generator cuts a vector loop into chunks of the native width (llvm_cpu).
    v = vloop.extent if vloop else 1
    chunks = [lanes] * (v // lanes) + ([v % lanes] if v % lanes else []) if vloop else [1]
    widths = [32 * min(lanes, _pow2(w)) if vloop else 32 for w in chunks]
    m = max(1, mults(main.value))
    issue = n_other * m * sum(1.0 / c.fma_rate(b) for b in widths)
    # Loads of the body: one per distinct address LLVM sees (the flattened body shares them),
    # each at the L1's rate for its width.
    load_ns = inserts = 0.0
    regs = regfile_bytes(c, lanes)
    # The innermost reduction loop of the body and the loops inside it: a broadcast operand that
    # output positions share across its steps (a stencil's x + rx) is loaded once and held.
    window: list[For] = []
    for lp in flat:  # innermost first
        if lp is not vloop:
            window.append(lp)
            if lp.var not in out_vars:
                break
    else:
        window = []  # no reduction step in the body: every broadcast is used and dropped
    shared: list[tuple[int, int]] = []  # per shared broadcast: (values held at once, extra uses)
    for e, masked in _loads(main.value, vloop.var if vloop else None):
        if e.buffer is main.buffer or not in_memory(e.buffer, regs):
            continue
        cf = coefs(e.indices, ranges)
        distinct = _distinct(cf, others, e.buffer.shape)
        stride = sum(e.buffer.strides[d] * k.get(vloop.var, 0) for d, k in enumerate(cf)) if vloop else 0
        if not vloop or stride == 0:  # scalar or broadcast: one load serves every chunk
            load_ns += distinct / c.load_rate(32)
            live = _distinct(cf, window, e.buffer.shape)
            if live < _uses(cf, window):  # output positions share it across reduction steps (x + rx)
                shared.append((live, _uses(cf, others) - distinct))
            continue
        align = _alignment(e, ranges, vloop, lanes) if abs(stride) == 1 else 4
        for w in chunks:
            if abs(stride) == 1 and not (masked and w != _pow2(w)):
                # a load that straddles two cache lines costs two
                load_ns += distinct * sum((1.0 + _split(4 * p, align)) / c.load_rate(32 * p) for p in _pieces(w))
                inserts += distinct * (len(_pieces(w)) - 1)
            else:  # a gather, or a masked load LLVM cannot widen: lane by lane, a load and an insert each
                load_ns += distinct * w / c.load_rate(32)
                inserts += distinct * w
    if main.buffer.scope != "local":  # accumulating in memory: a load and a store per output vector
        load_ns += 2 * chains_other * sum(1.0 / c.load_rate(b) for b in widths)
    issue += inserts / c.fma_rate(max(widths))
    # A chain only waits on its FMA latency when it runs on across bodies (a reduction loop outside
    # the flattened body, inside the accumulators' scope: the k loop of a GEMM tile). Bodies whose
    # chains start fresh are independent, and out-of-order execution overlaps them.
    in_body = {id(lp) for lp in flat}
    carried = any(lp.var not in out_vars for lp in loops[scope:] if id(lp) not in in_body)
    reduce_depth = n_other / max(1, chains_other) if carried else 0.0  # dependent FMAs per chain in one body
    latency = reduce_depth * m * max(c.in_flight(b) / c.fma_rate(b) for b in widths)
    chains = chains_other * len(chunks)
    # Beside its accumulators a body holds one broadcast operand and, when its rows share them,
    # one loaded vector per chunk (LLVM loads a GEMM tile's B vectors once per k step and
    # broadcasts A's rows one at a time): a 3x32 tile on AVX2 needs 12 + 4 + 1 registers, one
    # more than there are, and spills B (measured 140-165 GFLOPS against 180-185 for 4x24).
    operands = len(chunks) if chains > len(chunks) else 0
    room = max(1, c.vector_registers - operands - 1)
    # A spilled accumulator goes through memory every iteration, a store and a reload on its
    # chain: one register short, conv2d 1x1's 1x7x16 tile on AVX2 measured 67 GFLOPS where the
    # 1x4x16 that fits measured 181. Steep (the 4th power), so tiles that fit rank above.
    spill_eff = 1.0 if chains <= room else (room / chains) ** 4
    # Shared broadcasts that do not fit beside the accumulators are reloaded at every use (LLVM
    # spills them, not the accumulators): a load per FMA. conv2d 3x3 on AVX2, 1x14 outputs with
    # the 3 rx steps in the body (14 + 1 + 16 held values) measured 114-142 GFLOPS and spilled;
    # 2x4 outputs over channel steps (nothing shared) 172.
    if shared and chains + operands + sum(v for v, _ in shared) > c.vector_registers:
        load_ns += sum(extra for _, extra in shared) / c.load_rate(32)
    body = _overlap(issue, latency, load_ns) / spill_eff / (GUARD_EFF if guards else 1.0)
    bodies = math.prod(lp.extent for lp in loops) / max(1, n_other * v)
    peak = c.peak_flops_per_ns
    vec_eff = 2.0 * n_other * m * sum(chunks) / (issue * peak) if issue else 1.0
    return _Core(body * bodies * 1e-9, chains, min(1.0, vec_eff), issue / max(issue, latency), spill_eff)


def _distinct(cf: list[dict[Var, int]], loops: list[For], shape: Sequence[int]) -> int:
    """Distinct addresses an access with index coefficients ``cf`` takes over ``loops``."""
    n = 1
    for d, k in enumerate(cf):
        span = 1 + sum(abs(k.get(lp.var, 0)) * (lp.extent - 1) for lp in loops)
        n *= min(span, shape[d]) if d < len(shape) else span
    return n


def _uses(cf: list[dict[Var, int]], loops: list[For]) -> int:
    """Iterations of ``loops`` that read an access with index coefficients ``cf``: those of the
    loops it depends on (a loop it does not reads the same value again, in one register)."""
    return math.prod(lp.extent for lp in loops if any(k.get(lp.var, 0) for k in cf))


def _overlap(*times: float) -> float:
    """The time of resources that run at once (FMA issue, the latency chain, loads): the largest,
    plus a share of the others as it nears them (a p-norm). Out-of-order execution overlaps them,
    but not perfectly: with exactly latency x rate chains, or loads nearly as busy as the FMAs, a
    late operand stalls a pipe that has no slack to catch up."""
    top = max(times)
    if top <= 0:
        return 0.0
    return top * sum((t / top) ** OVERLAP_P for t in times) ** (1.0 / OVERLAP_P)


def _alignment(e: BufferLoad, ranges: dict[Var, tuple[int, int]], vloop: For | None, lanes: int) -> int:
    """Bytes every address of a vector load is a multiple of (within a cache line): the gcd of
    its index's steps over the loops (the vector loop's in whole chunks) and its offset; buffers
    themselves start on a line."""
    g = LINE
    isz = elem_bytes(e.buffer.dtype)
    for d, idx in enumerate(e.indices):
        stride = e.buffer.strides[d] if d < len(e.buffer.strides) else 1
        try:
            terms, const = arith.linear(idx, ranges)
        except Exception:  # not linearisable: assume element alignment
            return isz
        g = math.gcd(g, const * stride * isz)
        for atom, k in terms.items():
            if vloop is not None and atom is vloop.var:
                k *= lanes  # chunks start every ``lanes`` elements
            elif isinstance(atom, Var) and ranges.get(atom, (0, 0))[1] == 0:
                continue  # a loop of one iteration moves nothing
            g = math.gcd(g, k * stride * isz)
    return g or LINE


def _split(width: int, align: int) -> float:
    """The share of ``width``-byte loads at multiples of ``align`` bytes that cross a cache line."""
    offsets = range(0, LINE, max(1, align))
    return sum(1 for o in offsets if o + width > LINE) / len(offsets)


def _loads(e: Expr, vvar: Var | None, masked: bool = False) -> list[tuple[BufferLoad, bool]]:
    """The loads of an expression, each with whether a lane-dependent select guards it (the
    code generator masks those)."""
    if isinstance(e, BufferLoad):
        return [(e, masked)]
    if isinstance(e, Select):
        lane = vvar is not None and vvar in free_vars(e.cond)
        return (_loads(e.cond, vvar, masked) + _loads(e.t, vvar, masked or lane)
                + _loads(e.f, vvar, masked or lane))
    out = []
    for x in expr_children(e):
        out += _loads(x, vvar, masked)
    return out


def _copy_seconds(st: Store, loops: list[For], c: EstimateConstants, lanes: int) -> float:
    """A statement around the main one (padding, write-back): a vector load per global buffer it
    reads and a vector store per element vector (LLVM vectorizes such copies), at the L1's rate.
    A store into a local tile (an accumulator's initial value) is register work: free; one into a
    local buffer in memory (a thread's packed panel) is a copy like any other."""
    regs = regfile_bytes(c, lanes)
    if not in_memory(st.buffer, regs):
        return 0.0
    n = math.prod(lp.extent for lp in loops)
    vec = min(lanes, next((lp.extent for lp in reversed(loops) if lp.kind == "vectorize"), lanes))
    reads = sum(1 for e in walk(st.value) if isinstance(e, BufferLoad) and in_memory(e.buffer, regs))
    return n / max(1, vec) * (1 + reads) / c.load_rate(32 * _pow2(vec)) * 1e-9
