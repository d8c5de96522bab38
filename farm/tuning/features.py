"""Cost-model features: loop nest + knobs + device, as one fixed-length vector.

Three parts, concatenated (names in :func:`feature_names`):

* **loop nest** (from the lowered PrimFunc): the innermost ``LOOPS`` loops
  around the main compute statement (log2 extent, kind one-hot), vector
  width, unrolled body size, parallel extent and its balance over the cores,
  accumulator tile size against the register file; per buffer slot (output,
  then loads in expression order) the stride w.r.t. the two innermost loops,
  bytes touched and reuse at ``LEVELS`` tile levels; arithmetic intensity
  per level and footprints relative to L1/L2. These are shape-agnostic enough
  for a model trained on one shape or device to rank another.
* **pipeline estimate** (analytic, no training): the register body LLVM
  will unroll, the independent FMA chains it holds, vector-lane use,
  parallel balance, register spill and tail guards, multiplied into
  ``prior`` - a rough fraction of the core's FMA peak. It ranks a space
  before any measurement (the tuner's cold start) and gives the trees one
  strong split when they have seen only a handful of points.
* **knobs**: per knob, choice index normalised and for splits log2 of every
  factor (the ``-1`` remainder resolved), padded to ``KNOB_SLOTS``.
* **device**: ISA one-hot, vector bits, cores, L1d/L2/L3 sizes, from a
  fingerprint dict (``devices.fingerprint.cpu_fingerprint``) or the target.

Extraction lowers the config (about a millisecond) and walks the nest once;
results are cached per (workload, args, target, index).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from farm.compiler import arith
from farm.compiler.ir import Allocate, Block, BufferLoad, For, IfThenElse, PrimFunc, Stmt, Store
from farm.compiler.lowering import lower
from farm.errors import FarmError
from farm.target import Target
from farm.te.expr import Expr, Var, walk

log = logging.getLogger(__name__)

LOOPS = 6
LEVELS = (1, 2, 3, 4, 6, 99)  # innermost n loops; 99: the whole nest
BUF_SLOTS = 4
KNOB_SLOTS = 20
KINDS = ("serial", "parallel", "vectorize", "unroll")
# LLVM fully unrolls a short constant-trip loop around a small body; this many
# vector operations is about where its O3 full-unroll threshold stops.
UNROLL_BODY = 64
# Independent FMA chains a core needs to hide the FMA latency: ~4 cycles
# latency x 2 pipes on current x86 (Zen 4, Skylake-X) and Neoverse cores.
FMA_CHAINS = 8
# Below this many flops per byte of the operator's tensors a kernel is bound by
# memory traffic on any current CPU (a core does ~30-120 GFLOPS, DRAM feeds it
# ~10-20 GB/s), so its FMA pipeline use does not decide its speed.
MIN_PIPELINE_INTENSITY = 8.0
PIPE = ("log2chains", "vec_eff", "par_eff", "lat_eff", "spill_eff", "prior")
ISAS = ("x86_64", "aarch64", "arm")


def _l2(x: float) -> float:
    return math.log2(x) if x > 0 else -1.0


# --- loop nest ----------------------------------------------------------------

def _stores(s: Stmt, stack: list[For], guards: int, out: list[tuple[Store, list[For], int]]) -> None:
    if isinstance(s, For):
        _stores(s.body, stack + [s], guards, out)
    elif isinstance(s, Store):
        out.append((s, stack, guards))
    elif isinstance(s, IfThenElse):
        _stores(s.then, stack, guards + 1, out)
        if s.orelse is not None:
            _stores(s.orelse, stack, guards + 1, out)
    elif isinstance(s, Allocate):
        _stores(s.body, stack, guards, out)
    elif isinstance(s, Block):
        for x in s.stmts:
            _stores(x, stack, guards, out)


def _mults(e: Expr) -> int:
    return sum(1 for x in walk(e) if getattr(x, "op", None) == "*" and x.dtype.startswith("float"))


def _coefs(idx: Sequence[Expr], ranges: dict[Var, tuple[int, int]]) -> list[dict[Var, int]]:
    out = []
    for e in idx:
        try:
            terms, _ = arith.linear(e, ranges)
        except Exception:  # an index arith cannot linearise: no stride information for it
            terms = {}
        out.append({k: v for k, v in terms.items() if isinstance(k, Var)})
    return out


def _buffer_feats(buf: Any, coefs: list[dict[Var, int]], loops: list[For]) -> tuple[list[float], list[float]]:
    """Strides (flattened, elements) w.r.t. the 2 innermost loops; footprint bytes per level."""
    strides = buf.strides
    feats: list[float] = []
    for lp in (loops[-1:], loops[-2:-1]):
        st = sum(strides[d] * c.get(lp[0].var, 0) for d, c in enumerate(coefs)) if lp else 0
        feats += [_l2(1 + abs(st)), float(st == 0), float(abs(st) == 1)]
    byts = []
    isz = 4 if "32" in buf.dtype else 8
    for lv in LEVELS:
        inner = loops[-lv:]
        fp = 1
        for d, c in enumerate(coefs):
            span = 1 + sum(abs(c.get(lp.var, 0)) * (lp.extent - 1) for lp in inner)
            fp *= min(span, buf.shape[d]) if d < len(buf.shape) else span
        byts.append(float(fp * isz))
    return feats, byts


def pipeline_estimate(main: Store | None, loops: list[For], ranges: dict[Var, tuple[int, int]], guards: int,
                      par: int, cores: int, vregs: int, lanes: int) -> list[float]:
    """Analytic throughput estimate of the main statement's register body.

    The body is the run of innermost loops LLVM will flatten: unroll and
    vectorize loops, plus short serial ones while the body stays under
    ``UNROLL_BODY`` vector ops. Its loops that index the output are
    independent accumulation chains (a vectorized one counts vectors, not
    lanes); the others add dependent FMAs to the same chains.
    """
    if main is None or lanes <= 1:
        return [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    out_vars: set[Var] = set()
    for c in _coefs(main.indices, ranges):
        out_vars |= {v for v, k in c.items() if k}
    vec, chains, size = 1, 1, 1
    for lp in reversed(loops):
        flat = lp.kind in ("unroll", "vectorize") or (lp.kind == "serial" and lp.extent * size <= UNROLL_BODY)
        if not flat:
            break
        n = math.ceil(lp.extent / lanes) if lp.kind == "vectorize" else lp.extent
        if lp.kind == "vectorize":
            vec *= lp.extent
        size *= n
        if lp.var in out_vars:
            chains *= n
    vec_eff = vec / (math.ceil(vec / lanes) * lanes)
    par_eff = par / (math.ceil(par / cores) * cores) if par else 1.0 / cores
    lat_eff = min(1.0, chains / FMA_CHAINS)
    room = max(1, vregs - 4)  # a few registers hold the broadcast and loaded operands
    spill_eff = 1.0 if chains <= room else room / chains
    prior = vec_eff * par_eff * lat_eff * spill_eff * (0.8 if guards else 1.0)
    return [_l2(chains), vec_eff, par_eff, lat_eff, spill_eff, prior]


def op_intensity(workload: str, args: Sequence[int], target: str | Target) -> float:
    """Flops per byte of the operator's input and output tensors (config-independent)."""
    from farm.workloads.registry import get_workload

    wl = get_workload(workload)
    args = tuple(int(a) for a in args)
    t = Target.parse(target)
    _, tensors = wl.instantiate(args, wl.space(args, t).get(0), t)
    nbytes = sum(math.prod(x.shape) * (8 if "64" in x.dtype else 4) for x in tensors)
    return float(wl.flops(args)) / max(1, nbytes)


def nest_features(func: PrimFunc, cores: int, vregs: int, lanes: int, l1: int, l2: int) -> list[float]:
    stores: list[tuple[Store, list[For], int]] = []
    _stores(func.body, [], 0, stores)

    def work(x: tuple[Store, list[For], int]) -> float:
        return math.prod(lp.extent for lp in x[1]) * max(1, _mults(x[0].value))

    main, loops, guards = max(stores, key=work) if stores else (None, [], 0)
    f: list[float] = []
    tail = loops[-LOOPS:]
    for n in range(LOOPS):
        lp = tail[n - LOOPS + len(tail)] if n >= LOOPS - len(tail) else None
        f.append(_l2(lp.extent) if lp else -1.0)
        f += [float(lp is not None and lp.kind == k) for k in KINDS]
    iters = math.prod(lp.extent for lp in loops)
    vec = math.prod(lp.extent for lp in loops if lp.kind == "vectorize")
    # The unrolled body: unroll/vector loops directly inside the innermost serial loop.
    body = 1
    for lp in reversed(loops):
        if lp.kind not in ("unroll", "vectorize"):
            break
        body *= lp.extent
    par = 0
    for s in _all_for(func.body):
        if s.kind == "parallel":
            par = max(par, s.extent)
    chunks = math.ceil(par / cores) if par else 0
    balance = par / (chunks * cores) if par else 0.0
    local = [a.buffer.size for a in _all_alloc(func.body) if a.buffer.scope == "local"]
    acc = max(local) if local else 0
    f += [_l2(iters), _l2(vec), float(vec % lanes == 0 if vec else 0), _l2(body), _l2(par), float(par > 0),
          balance, _l2(par / cores) if par else -1.0, float(guards), _l2(acc),
          acc / max(1, lanes * vregs), float(len(stores)), float(len(func.globals)),
          _l2(sum(g.size for g in func.globals) * 4)]
    ranges: dict[Var, tuple[int, int]] = {lp.var: (0, lp.extent - 1) for lp in loops}
    f += pipeline_estimate(main, loops, ranges, guards, par, cores, vregs, lanes)
    slots: list[tuple[Any, list[Sequence[Expr]]]] = []
    if main is not None:
        slots.append((main.buffer, [main.indices]))
        for e in walk(main.value):
            if isinstance(e, BufferLoad) and e.buffer is not main.buffer and len(slots) < BUF_SLOTS:
                slots.append((e.buffer, [e.indices]))
    total_bytes = [0.0] * len(LEVELS)
    n_feat = 6 + 2 * len(LEVELS)
    for n in range(BUF_SLOTS):
        if n >= len(slots):
            f += [-1.0] * n_feat
            continue
        buf, idxs = slots[n]
        sf, byts = _buffer_feats(buf, _coefs(idxs[0], ranges), loops)
        f += sf
        for i, (lv, b) in enumerate(zip(LEVELS, byts)):
            it = math.prod(lp.extent for lp in loops[-lv:])
            f += [_l2(b), _l2(it * 4 / b)]  # bytes touched, reuse (accesses per distinct byte)
            total_bytes[i] += b
    flop = 2 * max(1, _mults(main.value)) if main is not None else 0
    for i, lv in enumerate(LEVELS):
        it = math.prod(lp.extent for lp in loops[-lv:])
        tb = max(total_bytes[i], 1.0)
        f += [_l2(flop * it / tb), _l2(tb / l1), _l2(tb / l2)]
    return f


def _all_for(s: Stmt) -> list[For]:
    from farm.compiler.ir import walk_stmts

    return [x for x in walk_stmts(s) if isinstance(x, For)]


def _all_alloc(s: Stmt) -> list[Allocate]:
    from farm.compiler.ir import walk_stmts

    return [x for x in walk_stmts(s) if isinstance(x, Allocate)]


# --- knobs and device ---------------------------------------------------------

def knob_features(space: Any, index: int) -> list[float]:
    f: list[float] = []
    choices = space.choices(index)
    for k, c in zip(space.knobs.values(), choices):
        f.append(c / max(1, len(k.options) - 1))
        opt = k.options[c]
        if k.kind == "split":
            f += [_l2(abs(x)) for x in opt.size[1:]]
        elif isinstance(opt, (int, float)):
            f.append(float(opt))
    f = f[:KNOB_SLOTS]
    return f + [-1.0] * (KNOB_SLOTS - len(f))


def device_features(fingerprint: dict[str, Any] | None, target: Target) -> list[float]:
    fp = fingerprint or {}
    isa = str(fp.get("isa") or target.arch)
    isa = {"amd64": "x86_64", "arm64": "aarch64"}.get(isa, isa)
    caches = fp.get("caches") or {}
    l1 = int(caches.get("L1d", 32 << 10))
    l2 = int(caches.get("L2", 1 << 20))
    l3 = int(caches.get("L3", 0))
    return [float(isa == a) for a in ISAS] + [
        target.vector_bits / 128.0, float(target.num_vector_registers), _l2(int(fp.get("cores") or 1)),
        _l2(l1 / 1024), _l2(l2 / 1024), _l2(l3 / 1024) if l3 else -1.0,
    ]


class FeatureExtractor:
    """Features of configs of one task (workload, args, target, device).

    ``features(indices)`` returns an (n, d) float32 array; a config that fails
    to lower gets NaN loop-nest features (XGBoost treats them as missing).
    """

    _cache: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()
    CACHE_MAX = 200_000

    def __init__(self, workload: str, args: Sequence[int], target: str | Target,
                 fingerprint: dict[str, Any] | None = None, space: Any = None) -> None:
        from farm.workloads.registry import get_workload

        self.wl = get_workload(workload)
        self.args = tuple(int(a) for a in args)
        self.target = Target.parse(target)
        self.space = space if space is not None else self.wl.space(self.args, self.target)
        fp = fingerprint or {}
        caches = fp.get("caches") or {}
        self.cores = int(fp.get("cores") or 1)
        self.l1, self.l2 = int(caches.get("L1d", 32 << 10)), int(caches.get("L2", 1 << 20))
        self.dev = device_features(fp, self.target)
        self._key = (self.wl.name, self.args, str(self.target), self.cores, self.l1, self.l2)

    def _one(self, index: int) -> list[float]:
        key = self._key + (index,)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            sch, tensors = self.wl.instantiate(self.args, self.space.get(index), self.target)
            nest = nest_features(lower(sch, tensors, self.wl.name), self.cores, self.target.num_vector_registers,
                                 self.target.vector_lanes_f32, self.l1, self.l2)
        except (FarmError, ValueError, ZeroDivisionError) as e:
            log.debug("config %d of %s%s does not lower: %s", index, self.wl.name, self.args, e)
            nest = [math.nan] * NEST_DIM
        feats = nest + knob_features(self.space, index)
        self._cache[key] = feats
        if len(self._cache) > self.CACHE_MAX:
            self._cache.popitem(last=False)
        return feats

    def features(self, indices: Sequence[int]) -> np.ndarray:
        rows = [self._one(int(i)) + self.dev for i in indices]
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), DIM)


NEST_DIM = LOOPS * (1 + len(KINDS)) + 14 + len(PIPE) + BUF_SLOTS * (6 + 2 * len(LEVELS)) + 3 * len(LEVELS)
DEV_DIM = len(ISAS) + 6
DIM = NEST_DIM + KNOB_SLOTS + DEV_DIM


def feature_names() -> list[str]:
    n = []
    for i in range(LOOPS):
        n += [f"loop{i}.log2ext"] + [f"loop{i}.{k}" for k in KINDS]
    n += ["log2iters", "log2vec", "vec_full", "log2body", "log2par", "has_par", "par_balance", "log2par_per_core",
          "guards", "log2acc", "acc_per_regfile", "n_stores", "n_globals", "log2global_bytes"]
    n += list(PIPE)
    for b in range(BUF_SLOTS):
        n += [f"buf{b}.{x}" for x in ("s0", "s0zero", "s0one", "s1", "s1zero", "s1one")]
        for lv in LEVELS:
            n += [f"buf{b}.L{lv}.log2bytes", f"buf{b}.L{lv}.reuse"]
    for lv in LEVELS:
        n += [f"L{lv}.intensity", f"L{lv}.bytes_per_l1", f"L{lv}.bytes_per_l2"]
    n += [f"knob{i}" for i in range(KNOB_SLOTS)]
    n += [f"isa.{a}" for a in ISAS] + ["vector_bits", "vregs", "log2cores", "log2l1", "log2l2", "log2l3"]
    return n


PRIOR_COL = feature_names().index("prior")


def prior_of(x: np.ndarray) -> np.ndarray:
    """The pipeline estimate column of a feature matrix (a config that did not lower: 0)."""
    return np.nan_to_num(x[:, PRIOR_COL].astype(np.float64), nan=0.0)
