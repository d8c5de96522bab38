"""Whole-graph views of a compute definition: stages in order, who reads whom, a canonical text and
its hash (what a record of a user kernel is keyed by), and the flops of every stage.

The canonical text names tensors and loop variables by position, not by the names the user chose,
and covers ops, shapes, dtypes and bodies; never a schedule. Two definitions that compute the same
thing in the same way print the same; change an index, a dtype or a shape and the hash changes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from farm.te.expr import (
    BinOp,
    Call,
    Cast,
    Cmp,
    Const,
    Expr,
    IterVar,
    Load,
    Logic,
    Reduce,
    Select,
    Var,
    children,
    walk,
)
from farm.te.tensor import ComputeOp, Operation, PlaceholderOp, Tensor


def topo_ops(outputs: Sequence[Operation]) -> list[Operation]:
    """Every operation the outputs depend on, producers before consumers (placeholders included)."""
    order: list[Operation] = []
    seen: set[int] = set()
    stack: list[tuple[Operation, bool]] = [(op, False) for op in reversed(list(outputs))]
    while stack:
        op, expanded = stack.pop()
        if expanded:
            order.append(op)
            continue
        if id(op) in seen:
            continue
        seen.add(id(op))
        stack.append((op, True))
        stack.extend((t.op, False) for t in reversed(op.input_tensors) if id(t.op) not in seen)
    return order


def consumers(ops: Sequence[Operation]) -> dict[int, list[ComputeOp]]:
    """id(op) -> the compute ops that read its output."""
    out: dict[int, list[ComputeOp]] = {id(op): [] for op in ops}
    for op in ops:
        if isinstance(op, ComputeOp):
            for t in op.input_tensors:
                out.setdefault(id(t.op), []).append(op)
    return out


# --- canonical text and hash ---------------------------------------------------------------------


def _expr_text(e: Expr, names: dict[int, str], tensors: dict[int, str]) -> str:
    def name(v: Var) -> str:
        return names.setdefault(id(v), f"v{len(names)}")

    def go(x: Expr) -> str:
        if isinstance(x, Const):
            return f"{x.value!r}:{x.dtype}"
        if isinstance(x, Var):
            return name(x)
        if isinstance(x, Load):
            return f"{tensors[id(x.tensor.op)]}[{','.join(go(i) for i in x.indices)}]"
        if isinstance(x, Reduce):
            axes = ",".join(f"{name(a)}<{a.extent}" for a in x.axes)
            where = f" where {go(x.where)}" if x.where is not None else ""
            return f"{x.combiner}({go(x.source)} over {axes}{where})"
        if isinstance(x, (BinOp, Cmp)):
            return f"({go(x.a)} {x.op} {go(x.b)})"
        if isinstance(x, Logic):
            return f"{x.op}({','.join(go(a) for a in x.args)})"
        if isinstance(x, Select):
            return f"select({go(x.cond)},{go(x.t)},{go(x.f)})"
        if isinstance(x, Call):
            return f"{x.func}({','.join(go(a) for a in x.args)})"
        if isinstance(x, Cast):
            return f"{x.dtype}({go(x.x)})"
        return f"{type(x).__name__}({','.join(go(c) for c in children(x))})"

    return f"{go(e)}:{e.dtype}"


def canonical_text(args: Sequence[Tensor]) -> str:
    """The graph behind ``args`` (inputs first, outputs last), one line per op, names by position."""
    outputs = [t.op for t in args if isinstance(t.op, ComputeOp)]
    ops = topo_ops(outputs)
    # Inputs are numbered in argument order so a reordered argument list is a different kernel.
    tensors: dict[int, str] = {}
    for t in args:
        if isinstance(t.op, PlaceholderOp):
            tensors.setdefault(id(t.op), f"in{len(tensors)}")
    lines = []
    for op in ops:
        if isinstance(op, PlaceholderOp):
            tag = tensors.setdefault(id(op), f"in{len(tensors)}")
            lines.append(f"{tag} = input{list(op.output.shape)}:{op.output.dtype}")
            continue
        assert isinstance(op, ComputeOp)
        tag = tensors.setdefault(id(op), f"t{len(tensors)}")
        names: dict[int, str] = {}
        axes = ",".join(f"{names.setdefault(id(a), f'v{len(names)}')}<{a.extent}" for a in op.axis)
        lines.append(f"{tag}[{axes}] = {_expr_text(op.body, names, tensors)}:{op.output.dtype}")
    lines.append("args " + ",".join(tensors[id(t.op)] for t in args))
    return "\n".join(lines)


def compute_hash(args: Sequence[Tensor]) -> str:
    """12 hex digits of sha256 over ``canonical_text``: a user kernel's identity in the log."""
    return hashlib.sha256(canonical_text(args).encode()).hexdigest()[:12]


# --- work ----------------------------------------------------------------------------------------

def _arith_ops(e: Expr) -> int:
    """Arithmetic operations in one evaluation of ``e`` (index arithmetic excluded)."""
    n = 0
    for x in walk(e):
        if isinstance(x, Load):
            continue
        if isinstance(x, (BinOp, Call)) and is_value(x):
            n += 1
    return n


def is_value(e: Expr) -> bool:
    """A floating-point or data-typed value, not index arithmetic over loop variables."""
    return e.dtype.startswith("float") or any(isinstance(x, Load) for x in walk(e))


def op_flops(op: ComputeOp) -> float:
    """Arithmetic of one op over its whole domain: for a reduction, its source's operations plus
    the combine, per point of spatial x reduction domain (a multiply-add counts 2, as TVM does)."""
    points = 1
    for a in op.axis:
        points *= a.extent
    body = op.body
    if isinstance(body, Reduce):
        red = 1
        for a in body.axes:
            red *= a.extent
        return float(points * red * (_arith_ops(body.source) + 1))
    return float(points * _arith_ops(body))


def graph_flops(outputs: Sequence[Operation]) -> float:
    """Flops of every compute op the outputs depend on, reductions and elementwise stages alike."""
    return sum(op_flops(op) for op in topo_ops(outputs) if isinstance(op, ComputeOp))


def iter_vars(op: ComputeOp) -> list[IterVar]:
    return list(op.axis) + list(op.reduce_axis)
