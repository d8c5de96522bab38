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
* **estimate** (analytic, no training; ``farm.tuning.estimate``): one call's
  time from the nest and the device's constants (``farm.tuning.constants``:
  probed, or a table by CPU name): the register body's FMA issue per vector
  width, latency chains, loads, spills, and the bytes each cache level moves
  over its bandwidth. Its factors and ``prior`` - the estimated fraction of
  the device's peak - rank a space before any measurement (the tuner's cold
  start) and give the trees one strong split when they have seen only a
  handful of points.
* **knobs**: per knob, choice index normalised and for splits log2 of every
  factor (the ``-1`` remainder resolved), padded to ``KNOB_SLOTS``.
* **device**: ISA one-hot, vector bits, cores, L1d/L2/L3 sizes, from a
  fingerprint dict (``devices.fingerprint.cpu_fingerprint``) or the target.

Extraction lowers the config (about a millisecond) and walks the nest once;
results are cached per (workload, args, target, device constants, threads, index).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from farm.compiler.ir import Allocate, BufferLoad, For, PrimFunc, Stmt
from farm.compiler.lowering import lower
from farm.errors import FarmError
from farm.target import Target
from farm.te.expr import Expr, Var, walk
from farm.tuning.constants import EstimateConstants, estimate_constants
from farm.tuning.estimate import coefs, estimate, mults, nest_stores, work

log = logging.getLogger(__name__)

LOOPS = 6
LEVELS = (1, 2, 3, 4, 6, 99)  # innermost n loops; 99: the whole nest
BUF_SLOTS = 4
KNOB_SLOTS = 20
KINDS = ("serial", "parallel", "vectorize", "unroll")
PIPE = ("log2chains", "vec_eff", "par_eff", "lat_eff", "spill_eff", "prior", "log2mem_over_core")
ISAS = ("x86_64", "aarch64", "arm")


def _l2(x: float) -> float:
    return math.log2(x) if x > 0 else -1.0


# --- loop nest ----------------------------------------------------------------

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


def nest_features(func: PrimFunc, consts: EstimateConstants, cores: int, lanes: int, flops: float = 0.0) -> list[float]:
    """Loop-nest features and the analytic estimate of one lowered config on ``cores`` threads."""
    stores = nest_stores(func.body)
    main, loops, guards = max(stores, key=work) if stores else (None, [], 0)
    vregs = consts.vector_registers
    l1, l2 = consts.caches[0], consts.caches[1] or consts.caches[0]
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
    f += estimate(func, consts, cores, lanes, flops, stores).row()
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
        sf, byts = _buffer_feats(buf, coefs(idxs[0], ranges), loops)
        f += sf
        for i, (lv, b) in enumerate(zip(LEVELS, byts)):
            it = math.prod(lp.extent for lp in loops[-lv:])
            f += [_l2(b), _l2(it * 4 / b)]  # bytes touched, reuse (accesses per distinct byte)
            total_bytes[i] += b
    flop = 2 * max(1, mults(main.value)) if main is not None else 0
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
                 fingerprint: dict[str, Any] | None = None, space: Any = None, threads: int = 0) -> None:
        from farm.workloads.registry import get_workload

        self.wl = get_workload(workload)
        self.args = tuple(int(a) for a in args)
        self.target = Target.parse(target)
        self.space = space if space is not None else self.wl.space(self.args, self.target)
        fp = fingerprint or {}
        # The threads the kernel runs with (the measurement's num_threads), else every core.
        self.cores = int(threads or fp.get("cores") or 1)
        self.consts = estimate_constants(fp, self.target)
        self.flops = float(self.wl.flops(self.args))
        self.dev = device_features(fp, self.target)
        self._key = (self.wl.name, self.args, str(self.target), self.cores, self.consts)

    def _one(self, index: int) -> list[float]:
        key = self._key + (index,)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            sch, tensors = self.wl.instantiate(self.args, self.space.get(index), self.target)
            nest = nest_features(lower(sch, tensors, self.wl.name), self.consts, self.cores,
                                 self.target.vector_lanes_f32, self.flops)
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
    """The estimate column of a feature matrix: the estimated fraction of the device's peak
    (a config that did not lower: 0)."""
    return np.nan_to_num(x[:, PRIOR_COL].astype(np.float64), nan=0.0)
