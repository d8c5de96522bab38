"""Template-free schedule spaces: rules over a compute graph's structure, in the manner of Ansor's
and MetaSchedule's sketches, generate the knobs and apply one config of them.

Rules, per stage (producers before consumers):

* an elementwise producer is inlined into its readers, computed at root, or computed per row of
  the output (``at_<stage>``: ``inline`` | ``root`` | ``row``);
* a reduction that is not an output is computed at root or per row of the output; one whose only
  reader is an elementwise output reading it point for point becomes that output's accumulator
  (a fused epilogue, as dense + bias + ReLU);
* the output (and every root reduction) is tiled: the last two spatial axes in three levels (outer,
  cache tile, register tile), the innermost one vectorized (tails are handled by the compiler), the
  outer axes fused and run in parallel, and for reductions a ``cache_write`` register tile computed
  inside the cache tile with the reduction split and an unroll depth.

Knob option 0 is always the plain choice (inline, root, no cache tile...), so config 0 builds the
simple schedule and the tuner explores from there. Everything here is CPU-only: GPU targets need
thread bindings, which a template writes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from farm.errors import ConfigError
from farm.target import Target
from farm.te.expr import IterVar, Load, walk
from farm.te.graph import consumers, topo_ops
from farm.te.schedule import Schedule, create_schedule
from farm.te.tensor import ComputeOp, Tensor

ROW_CANDIDATES = [1, 2, 4, 8, 16, 32]
REG_ROWS = [1, 2, 3, 4, 6, 8, 12, 16]
RED_INNER = [1, 2, 4, 8, 16]


def _lanes(target: Target, dtype: str) -> int:
    return max(1, target.vector_bits // (8 * np.dtype(dtype).itemsize))


def _vec_candidates(extent: int, lanes: int) -> list[int]:
    """Inner vector tile sizes: lane multiples (the compiler masks tails), plus short ones."""
    c = [x for x in (lanes, 2 * lanes, 3 * lanes, 4 * lanes) if x <= max(extent, lanes)]
    small = [x for x in (1, lanes // 4, lanes // 2) if x >= 1 and x not in c and x < extent]
    return sorted(set(small + c)) if extent >= lanes // 2 else sorted({1, max(1, extent)})


def _point_for_point(reader: ComputeOp, op: ComputeOp) -> bool:
    """Every read of ``op`` in ``reader`` is ``op[reader's own axes]``: the reader can be its epilogue."""
    if tuple(op.output.shape) != tuple(a.extent for a in reader.axis) or reader.reduce_axis:
        return False
    loads = [e for e in walk(reader.body) if isinstance(e, Load) and e.tensor.op is op]
    return bool(loads) and all(len(e.indices) == len(reader.axis) and
                               all(i is a for i, a in zip(e.indices, reader.axis)) for e in loads)


def _row_attachable(op: ComputeOp, out: ComputeOp) -> bool:
    """Computing ``op`` per row of ``out`` makes sense: both are indexed by the same leading axis."""
    if len(out.axis) < 2 or not op.axis or op.axis[0].extent != out.axis[0].extent:
        return False
    for e in walk(out.body):
        if isinstance(e, Load) and e.tensor.op is op and not (e.indices and e.indices[0] is out.axis[0]):
            return False
    return True


class _Sketch:
    """One pass over the graph that defines every knob (on a ConfigSpace: all of them, whatever the
    choices, since a space is collected with each knob's first option) and applies one config."""

    def __init__(self, cfg: Any, tensors: Sequence[Tensor], target: Target) -> None:
        self.cfg, self.target = cfg, target
        self.outputs = [t.op for t in tensors if isinstance(t.op, ComputeOp)]
        self.ops = [op for op in topo_ops(self.outputs) if isinstance(op, ComputeOp)]
        self.readers = consumers(self.ops)
        self.s = create_schedule(self.outputs)
        self.main = self.outputs[-1]
        self.row_stages: list[ComputeOp] = []  # computed per row of the main output
        self.fused_acc: dict[int, ComputeOp] = {}  # id(output) -> its accumulator reduction

    def knob(self, name: str, options: list[Any]) -> Any:
        self.cfg.define_knob(name, options)
        return self.cfg[name]

    def split(self, name: str, extent: int, levels: int, candidates: list[list[int]]) -> Any:
        self.cfg.define_split(name, extent, levels, candidates=candidates)
        return self.cfg[name]

    def run(self) -> Schedule:
        chosen: dict[int, str] = {}
        for op in self.ops:
            if op in self.outputs:
                continue
            readers = self.readers.get(id(op), [])
            if op.reduce_axis and len(readers) == 1 and readers[0] in self.outputs and \
                    _point_for_point(readers[0], op):
                self.fused_acc[id(readers[0])] = op
                continue
            row_ok = _row_attachable(op, self.main)
            choices = (["root"] if op.reduce_axis else ["inline", "root"]) + (["row"] if row_ok else [])
            chosen[id(op)] = self.knob(f"at_{op.name}", choices)
        placed = self._placements(chosen)
        later: list[tuple[ComputeOp, bool]] = []  # every tiled stage, and whether it is computed at root
        for op in self.ops:
            how = placed.get(id(op))
            if how == "inline":
                self.s[op].compute_inline()
            elif how == "row":
                self.row_stages.append(op)
            if how is not None:  # its knobs exist whatever this config chose (a space has one shape)
                later.append((op, how == "root"))
        for out in self.outputs:
            later.append((out, True))
        for op, at_root in later:
            self._tile(op, apply=at_root)
        return self.s

    def _placements(self, chosen: dict[int, str]) -> dict[int, str]:
        """The choices, made consistent: a stage computed per row of the output is read only there
        (by the output or other per-row stages, directly or through inlined ones), else at root."""
        placed: dict[int, str] = {}

        def effective_readers(op: ComputeOp) -> list[ComputeOp]:
            out: list[ComputeOp] = []
            for r in self.readers.get(id(op), []):
                out.extend(effective_readers(r) if placed.get(id(r)) == "inline" else [r])
            return out

        for op in reversed(self.ops):
            how = chosen.get(id(op))
            if how is None:
                continue
            if how == "row" and not all(r is self.main or placed.get(id(r)) == "row" for r in effective_readers(op)):
                how = "root"
            placed[id(op)] = how
        return placed

    # --- tiling ------------------------------------------------------------------------------------

    def _tile(self, op: ComputeOp, apply: bool) -> None:
        """Define the stage's tiling knobs; apply them when the stage is computed at root."""
        axes = list(self.s[op].op.axis)
        if not axes:
            return
        lanes = _lanes(self.target, op.output.dtype)
        acc = self.fused_acc.get(id(op))
        # Register tiles pay off for outputs and 2-D intermediates; a 1-D intermediate reduction
        # (a row's max or mean) gets the vector plan only: knobs that change no code would only
        # dilute the search (layer norm's space was 1.4e11, almost all of it equivalent).
        tileable = bool(op.reduce_axis) and (op in self.outputs or len(axes) >= 2)
        cache = 0
        if acc is None and tileable:
            cache = self.knob(f"cache_{op.name}", [0, 1])
        register = acc is not None or (tileable and cache == 1)
        plan = self._plan(op, axes, lanes, register_possible=acc is not None or tileable)
        if not apply:
            if op in self.row_stages and not op.reduce_axis and plan["vec"].size[-1] > 1:
                self.s[op].vectorize(self.s[op].op.axis[-1])
            return
        rows = op is self.main and bool(self.row_stages)
        if register:
            if acc is None:
                acc = self.s.cache_write(op.output, "local").op
            anchor = self._register_tiled(op, axes, acc, plan, keep_rows=rows)
        else:
            anchor = self._vector_tiled(op, axes, plan, keep_rows=rows)
        if rows:
            for r in self.row_stages:
                self.s[r].compute_at(self.s[op], anchor)

    def _plan(self, op: ComputeOp, axes: list[IterVar], lanes: int, register_possible: bool) -> dict[str, Any]:
        *lead, last = axes
        plan: dict[str, Any] = {
            "vec": self.split(f"vec_{op.name}", last.extent, 2, [_vec_candidates(last.extent, lanes)]),
            "par": self.knob(f"par_{op.name}", [0, 1, 2]),
        }
        if register_possible:
            plan["j"] = self.split(f"tile_{op.name}_j", last.extent, 3,
                                   [[1, 2, 4, 8, 16], _vec_candidates(last.extent, lanes)])
            if lead:
                plan["i"] = self.split(f"tile_{op.name}_i", lead[-1].extent, 3, [ROW_CANDIDATES, REG_ROWS])
            red = (self.fused_acc.get(id(op)) or op).reduce_axis
            plan["k"] = self.split(f"tile_{op.name}_k", red[-1].extent, 2, [RED_INNER])
            plan["order"] = self.knob(f"order_{op.name}", [0, 1])
            plan["unroll"] = self.knob(f"unroll_{op.name}", [0, 1, 2])
        return plan

    def _vector_tiled(self, op: ComputeOp, axes: list[IterVar], plan: dict[str, Any], keep_rows: bool) -> IterVar:
        """Elementwise (or a reduction without a cache tile): vector tile of the last axis, parallel
        outside. Returns the row loop (where per-row stages attach)."""
        st = self.s[op]
        *lead, last = axes
        red = list(st.op.reduce_axis)
        lo, li = plan["vec"].apply(self.s, op.output, last)
        st.reorder(*lead, lo, *red, li)
        if plan["vec"].size[-1] > 1:
            st.vectorize(li)
        row = lead[0] if lead else lo
        if plan["par"]:
            if keep_rows or not lead or plan["par"] == 1:
                st.parallel(row)  # per-row stages attach here: fusing would recompute them per chunk
            else:
                row = st.fuse(*lead, lo)
                st.parallel(row)
        return row

    def _register_tiled(self, op: ComputeOp, axes: list[IterVar], acc: ComputeOp, plan: dict[str, Any],
                        keep_rows: bool) -> IterVar:
        """A reduction into a register tile (its cache stage, or a fused epilogue's producer).
        Returns the row loop (where per-row stages attach)."""
        st = self.s[op]
        *lead, last = axes
        jo, jm, jr = plan["j"].apply(self.s, op.output, last)
        if lead:
            *lead, prev = lead
            io, im, ir = plan["i"].apply(self.s, op.output, prev)
            st.reorder(*lead, io, jo, im, jm, ir, jr)
            outer = [*lead, io]
        else:
            st.reorder(jo, jm, jr)
            outer = []
        st.vectorize(jr)
        row = outer[0] if outer else jo
        par = plan["par"]
        if par and (keep_rows or not outer):
            st.parallel(row)
        elif par == 1:
            row = st.fuse(*outer) if len(outer) > 1 else outer[0]
            st.parallel(row)
        elif par == 2:
            row = st.fuse(*outer, jo)
            st.parallel(row)
        sa = self.s[acc]
        sa.compute_at(st, jm)
        *alead, yc = sa.op.axis
        xc = alead.pop() if alead else None
        red = list(sa.op.reduce_axis)
        ko, ki = plan["k"].apply(self.s, acc.output, red[-1])
        inner = [xc] if xc is not None else []
        if plan["order"] == 0:
            sa.reorder(*alead, *red[:-1], ko, *inner, ki, yc)
        else:
            sa.reorder(*alead, *red[:-1], ko, ki, *inner, yc)
        if plan["unroll"] >= 1 and xc is not None:
            sa.unroll(xc)
        if plan["unroll"] >= 2:
            sa.unroll(ki)
        sa.vectorize(yc)
        return row


def auto_schedule(cfg: Any, tensors: Sequence[Tensor], target: Target) -> Schedule:
    """Define the generated knobs on ``cfg`` (a ConfigSpace or ConfigEntity) and return the schedule
    of ``tensors`` (inputs first, outputs last) for that config."""
    if target.kind != "llvm":
        raise ConfigError("template-free kernels are scheduled for CPU targets; write a template with "
                          "thread bindings for a GPU")
    return _Sketch(cfg, tensors, target).run()
