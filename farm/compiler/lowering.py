"""Lowering: a schedule to a loop nest (PrimFunc).

Bound inference is interval-based on linear index forms: a stage attached at
loop L of its consumer computes, per dimension, the box its consumer reads
while the loops inside L run. Every split, attach region and tail is guarded
unless the bounds prove the guard redundant, so non-divisible extents stay
correct without special cases.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from farm.compiler import arith
from farm.compiler.ir import Allocate, Block, Buffer, BufferLoad, For, IfThenElse, PrimFunc, Stmt, Store
from farm.errors import LowerError
from farm.te.expr import (
    BinOp,
    Cmp,
    Const,
    Expr,
    IterVar,
    Load,
    Logic,
    Reduce,
    Var,
    free_vars,
    is_float,
    substitute,
    transform,
    walk,
)
from farm.te.schedule import Schedule, Split, Stage
from farm.te.tensor import PlaceholderOp, Tensor

Region = list[tuple[Expr, int]]


def _identity(combiner: str, dtype: str) -> Const:
    if combiner == "sum":
        return Const(0, dtype)
    big = math.inf if is_float(dtype) else (2**31 - 1 if dtype == "int32" else 127)
    return Const(-big if combiner == "max" else big, dtype)


def _combine(combiner: str, acc: Expr, x: Expr) -> Expr:
    return BinOp({"sum": "+", "max": "max", "min": "min"}[combiner], acc, x)


def _and(conds: list[Expr]) -> Expr | None:
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else Logic("and", conds)


class _Lowerer:
    def __init__(self, sch: Schedule, args: Sequence[Tensor], name: str) -> None:
        self.sch, self.name = sch, name
        self.args = list(args)
        self.ranges: dict[Var, tuple[int, int]] = {}
        self.buffers: dict[int, Buffer] = {}
        self.bases: dict[int, list[Expr]] = {}
        self.body: dict[int, Expr] = {}
        self.children: dict[tuple[int, int], list[Stage]] = {}
        self.globals: list[Buffer] = []

    # --- setup ---------------------------------------------------------------
    def _check_args(self) -> list[Buffer]:
        params = []
        names = set()
        for t in self.args:
            if not isinstance(t, Tensor):
                raise LowerError(f"build arguments must be tensors, got {type(t).__name__}")
            if t.name in names:
                raise LowerError(f"two arguments are named {t.name!r}; give tensors distinct names")
            names.add(t.name)
            buf = Buffer(t.name, t.shape, t.dtype, "global", "arg")
            self.buffers[id(t)] = buf
            params.append(buf)
        for op in self.sch.outputs:
            if id(op.output) not in self.buffers:
                raise LowerError(f"output {op.name} of the schedule is not among the build arguments")
        for st in self.sch.stages:
            for e in walk(st.body):
                if isinstance(e, Load) and isinstance(e.tensor.op, PlaceholderOp) and id(e.tensor) not in self.buffers:
                    raise LowerError(
                        f"stage {st.name} reads placeholder {e.tensor.name}, which is not a build argument"
                    )
        return params

    def _inline(self) -> None:
        inlined: dict[int, Stage] = {}
        for st in self.sch.stages:
            def repl(e: Expr) -> Expr | None:
                if isinstance(e, Load) and id(e.tensor) in inlined:
                    prod = inlined[id(e.tensor)]
                    return substitute(self.body[id(prod)], dict(zip(prod.axis, e.indices)))  # type: ignore[arg-type]
                return None

            self.body[id(st)] = transform(st.body, repl)
            if st.attach == "inline":
                if id(st.tensor) in self.buffers:
                    raise LowerError(f"stage {st.name} is inlined but is also a build argument")
                inlined[id(st.tensor)] = st

    def run(self) -> PrimFunc:
        params = self._check_args()
        self._inline()
        order = {id(st): n for n, st in enumerate(self.sch.stages)}
        roots = []
        for st in self.sch.stages:
            if st.attach == "at":
                parent = st.attach_stage
                assert parent is not None and st.attach_ivar is not None
                if parent.attach == "inline":
                    raise LowerError(f"stage {st.name} is attached to {parent.name}, which is inlined")
                if order[id(parent)] < order[id(st)]:
                    raise LowerError(f"stage {st.name} is attached to {parent.name}, which does not consume it")
                if not any(x is st.attach_ivar for x in parent.leaf):
                    raise LowerError(
                        f"stage {st.name} is attached at {st.attach_ivar.name}, no longer a loop of {parent.name}"
                    )
                self.children.setdefault((id(parent), id(st.attach_ivar)), []).append(st)
            elif st.attach == "root":
                roots.append(st)
                if id(st.tensor) not in self.buffers:
                    buf = Buffer(st.tensor.name, st.tensor.shape, st.tensor.dtype, "global", "global")
                    self.buffers[id(st.tensor)] = buf
                    self.globals.append(buf)
        body = Block([self._stage_nest(st, None) for st in roots])
        return PrimFunc(self.name, params, body, self.globals)

    # --- one stage -----------------------------------------------------------
    def _stage_nest(self, st: Stage, region: Region | None) -> Stmt:
        shape = st.tensor.shape
        if region is None:
            region = [(Const(0, "int32"), d) for d in shape]
        ext: dict[IterVar, int] = {}
        for a, (_, e) in zip(st.axis, region):
            ext[a] = e
        for r in st.reduce_axis:
            ext[r] = r.extent
        for rel in st.relations:
            if isinstance(rel, Split):
                pe = ext[rel.parent]
                ext[rel.inner] = min(rel.factor, pe)
                ext[rel.outer] = -(-pe // rel.factor)
            else:
                ext[rel.fused] = ext[rel.outer] * ext[rel.inner]
        value: dict[IterVar, Expr] = {v: v for v in st.leaf}
        for rel in reversed(st.relations):
            if isinstance(rel, Split):
                value[rel.parent] = value[rel.outer] * ext[rel.inner] + value[rel.inner]
            else:
                value[rel.outer] = value[rel.fused] // ext[rel.inner]
                value[rel.inner] = value[rel.fused] % ext[rel.inner]
        for v in st.leaf:
            self.ranges[v] = (0, ext[v] - 1)

        rel_vals = [arith.simplify(value[a], self.ranges) for a in st.axis]
        abs_vals = [arith.simplify(b + r, self.ranges) for (b, _), r in zip(region, rel_vals)]
        data_guards: list[Expr] = []
        attached = region is not None and any(not (isinstance(b, Const) and b.value == 0) for b, _ in region)
        for d, (rv, av) in enumerate(zip(rel_vals, abs_vals)):
            bnd = arith.linear_bounds(rv, self.ranges)
            if bnd is None or bnd[1] >= region[d][1]:
                data_guards.append(Cmp("<", rv, Const(region[d][1], "int32")))
            if attached:
                bnd = arith.linear_bounds(av, self.ranges)
                if bnd is None or bnd[1] >= shape[d]:
                    data_guards.append(Cmp("<", av, Const(shape[d], "int32")))
        red_guards: list[Expr] = []
        red_vals: dict[Var, Expr] = {}
        for r in st.reduce_axis:
            rv = arith.simplify(value[r], self.ranges)
            red_vals[r] = rv
            bnd = arith.linear_bounds(rv, self.ranges)
            if bnd is None or bnd[1] >= r.extent:
                red_guards.append(Cmp("<", rv, Const(r.extent, "int32")))

        mapping: dict[Var, Expr] = dict(zip(st.axis, abs_vals))
        mapping.update(red_vals)
        body = substitute(self.body[id(st)], mapping)

        # Producers attached inside this stage: their regions and buffers first,
        # so that this stage's loads of them can be rebased.
        child_nests: dict[int, list[Stmt]] = {}
        child_bufs: dict[int, list[Buffer]] = {}
        for n, iv in enumerate(st.leaf):
            for child in self.children.get((id(st), id(iv)), []):
                creg = self._infer_region(child, st, body, set(st.leaf[n + 1 :]))
                buf = Buffer(child.tensor.name, [e for _, e in creg], child.tensor.dtype,
                             child.scope if child.scope != "global" else "local", "local")
                if id(child.tensor) in self.buffers:
                    raise LowerError(f"stage {child.name} is a build argument and cannot be computed at {st.name}")
                self.buffers[id(child.tensor)] = buf
                self.bases[id(child.tensor)] = [b for b, _ in creg]
                child_nests.setdefault(id(iv), []).append(self._stage_nest(child, creg))
                child_bufs.setdefault(id(iv), []).append(buf)

        out = self.buffers.get(id(st.tensor))
        if out is None:
            raise LowerError(f"stage {st.name} has no buffer (internal)")
        idx = tuple(abs_vals) if out.kind != "local" else tuple(rel_vals)

        def guarded(stmt: Stmt, conds: list[Expr], reduce_conds: list[Expr] = []) -> Stmt:  # noqa: B006
            # Data guards of a local tile only skip positions past the tensor's
            # edge; codegen may drop them. Reduction guards never are dropped.
            c = _and(conds)
            if c is not None:
                stmt = IfThenElse(c, stmt, tile_pad=out.kind == "local")
            r = _and(reduce_conds)
            return stmt if r is None else IfThenElse(r, stmt)

        def wrap(vars_: Sequence[IterVar], inner: Stmt, attach: bool) -> Stmt:
            for v in reversed(vars_):
                if attach and id(v) in child_nests:
                    inner = Block(child_nests[id(v)] + [inner])
                    for buf in reversed(child_bufs[id(v)]):
                        inner = Allocate(buf, inner)
                kind = st.annotations.get(v, "serial")
                tag = ""
                if v in st.bindings:
                    kind, tag = "bind", st.bindings[v]
                inner = For(v, ext[v], kind, inner, tag)
            return inner

        if isinstance(body, Reduce):
            src = self._rewrite_loads(body.source, st)
            red_conds = list(red_guards)
            if body.where is not None:
                red_conds.append(self._rewrite_loads(body.where, st))
            init = guarded(Store(out, idx, _identity(body.combiner, body.dtype)), data_guards)
            update = guarded(
                Store(out, idx, _combine(body.combiner, BufferLoad(out, idx), src)), data_guards, red_conds
            )
            p = next((n for n, v in enumerate(st.leaf) if v.kind == "reduce"), len(st.leaf))
            init_nest = wrap([v for v in st.leaf[p:] if v.kind == "data"], init, attach=False)
            upd_nest = wrap(st.leaf[p:], update, attach=True)
            return wrap(st.leaf[:p], Block([init_nest, upd_nest]), attach=True)
        value_expr = self._rewrite_loads(body, st)
        return wrap(st.leaf, guarded(Store(out, idx, value_expr), data_guards), attach=True)

    def _rewrite_loads(self, e: Expr, st: Stage) -> Expr:
        def repl(x: Expr) -> Expr | None:
            if not isinstance(x, Load):
                return None
            buf = self.buffers.get(id(x.tensor))
            if buf is None:
                raise LowerError(
                    f"stage {st.name} reads {x.tensor.name}, which is not computed where {st.name} runs "
                    f"(attach it at a loop of {st.name} or compute it at root)"
                )
            base = self.bases.get(id(x.tensor))
            idx = x.indices if base is None else [i - b for i, b in zip(x.indices, base)]
            return BufferLoad(buf, [arith.simplify(i, self.ranges) for i in idx])

        return transform(e, repl)

    def _infer_region(self, child: Stage, parent: Stage, body: Expr, free: set[IterVar]) -> Region:
        """The box of ``child``'s output that ``parent`` reads inside the attach loop."""
        accesses = [e.indices for e in walk(body) if isinstance(e, Load) and e.tensor is child.tensor]
        free = set(free)
        for other in self.sch.stages:
            if other is not parent and other is not child and other.attach != "inline":
                if any(isinstance(e, Load) and e.tensor is child.tensor for e in walk(self.body[id(other)])):
                    nested = self._nested_accesses(child, other, parent, body, free)
                    if nested is None:
                        raise LowerError(
                            f"stage {child.name} is computed at {parent.name} but {other.name} reads it too"
                        )
                    accesses += nested
        if not accesses:
            raise LowerError(f"stage {child.name} is attached to {parent.name}, which does not read it")
        region: Region = []
        for d, dim in enumerate(child.tensor.shape):
            key = None
            lo_min = hi_max = None
            full = False
            for acc in accesses:
                terms, c0 = arith.linear(arith.simplify(acc[d], self.ranges), self.ranges)
                fixed: dict[Expr, int] = {}
                lo = hi = c0
                for atom, c in terms.items():
                    fv = free_vars(atom)
                    if isinstance(atom, IterVar) and atom in free:
                        e1 = c * (self.ranges[atom][1])
                        lo, hi = lo + min(0, e1), hi + max(0, e1)
                    elif fv & free:
                        full = True
                    else:
                        fixed[atom] = c
                k = tuple(sorted((arith.skey(a), c) for a, c in fixed.items()))
                if key is None:
                    key, fixed_terms = k, fixed
                elif k != key:
                    full = True
                lo_min = lo if lo_min is None else min(lo_min, lo)
                hi_max = hi if hi_max is None else max(hi_max, hi)
            assert lo_min is not None and hi_max is not None
            extent = hi_max - lo_min + 1
            if full or extent >= dim:
                region.append((Const(0, "int32"), dim))
            else:
                region.append((arith.to_expr((fixed_terms, lo_min)), extent))
        return region

    def _nested_accesses(self, child: Stage, other: Stage, parent: Stage, body: Expr,
                         free: set[IterVar]) -> list[list[Expr]] | None:
        """``other``'s reads of ``child`` in the parent's loop variables, when ``other``
        is itself attached to ``parent`` inside (or at) the child's attach loop (a packed
        operand computed per outer tile and read by the register-tile stage within
        it); None when ``other`` runs elsewhere.

        ``other``'s axes become its own region's base plus fresh offset loops, and
        those offsets and its reduction axes join ``free``: they all vary inside
        the child's attach loop."""
        if other.attach != "at" or other.attach_stage is not parent:
            return None
        # Inside the child's attach loop, or at that same loop (two per-row stages, one reading the
        # other: the schedule's stage order computes the producer first).
        if other.attach_ivar not in free and other.attach_ivar is not child.attach_ivar:
            return None
        n = next(i for i, x in enumerate(parent.leaf) if x is other.attach_ivar)
        oreg = self._infer_region(other, parent, body, set(parent.leaf[n + 1:]))
        mapping: dict[Var, Expr] = {}
        for a, (base, ext) in zip(other.axis, oreg):
            off = IterVar(f"{a.name}.off", ext)
            self.ranges[off] = (0, ext - 1)
            free.add(off)
            mapping[a] = base + off
        for r in other.reduce_axis:
            self.ranges[r] = (0, r.extent - 1)
            free.add(r)
        return [[substitute(i, mapping) for i in e.indices] for e in walk(self.body[id(other)])
                if isinstance(e, Load) and e.tensor is child.tensor]


def lower(sch: Schedule, args: Sequence[Tensor], name: str = "kernel") -> PrimFunc:
    """Lower a schedule to a loop-nest IR; ``str(farm.tir.func_str(f))`` prints it."""
    return _Lowerer(sch, args, name).run()
