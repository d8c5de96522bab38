"""Tensors and operations: placeholder, compute, reduce_axis."""
from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence

from farm.te.expr import ALL_TYPES, Expr, IterVar, Load, Reduce, as_expr, walk

_ids = itertools.count()


class Operation:
    name: str
    output: Tensor

    @property
    def input_tensors(self) -> list[Tensor]:
        return []


class PlaceholderOp(Operation):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        self.name = name
        self.output = Tensor(shape, dtype, self, name)


class ComputeOp(Operation):
    """out[axis...] = body, where body may be a Reduce over reduce_axis."""

    def __init__(self, name: str, axis: Sequence[IterVar], body: Expr, dtype: str, tag: str = "") -> None:
        self.name = name
        self.axis = list(axis)
        self.body = body
        self.reduce_axis = list(body.axes) if isinstance(body, Reduce) else []
        self.tag = tag
        self.output = Tensor(tuple(a.extent for a in axis), dtype, self, name)

    @property
    def input_tensors(self) -> list[Tensor]:
        seen: dict[int, Tensor] = {}
        for e in walk(self.body):
            if isinstance(e, Load):
                seen.setdefault(id(e.tensor), e.tensor)
        return list(seen.values())


class Tensor:
    """A dense multi-dimensional array produced by an operation."""

    __hash__ = object.__hash__

    def __init__(self, shape: tuple[int, ...], dtype: str, op: Operation, name: str) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.op = op
        self.name = name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, idx: object) -> Load:
        items = idx if isinstance(idx, tuple) else (idx,)
        if len(items) != len(self.shape):
            raise IndexError(f"tensor {self.name} has {len(self.shape)} dimensions, indexed with {len(items)}")
        return Load(self, [as_expr(i) for i in items])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Tensor({self.name}, {list(self.shape)}, {self.dtype})"


def _check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    out = tuple(shape)
    for d in out:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"{what}: shape must be positive integers, got {list(out)}")
    return out


def placeholder(shape: Sequence[int], dtype: str = "float32", name: str = "placeholder") -> Tensor:
    """An input tensor."""
    if dtype not in ALL_TYPES:
        raise TypeError(f"placeholder {name}: unsupported dtype {dtype!r}")
    return PlaceholderOp(name, _check_shape(shape, f"placeholder {name}"), dtype).output


def reduce_axis(dom: tuple[int, int] | int, name: str = "rv") -> IterVar:
    """A reduction axis over [lo, hi); lo must be 0 (shift the index instead)."""
    if isinstance(dom, int):
        lo, hi = 0, dom
    else:
        lo, hi = dom
    if lo != 0:
        raise ValueError(f"reduce_axis {name}: domains start at 0, got ({lo}, {hi})")
    return IterVar(name, hi, "reduce")


def compute(
    shape: Sequence[int],
    fcompute: Callable[..., Expr],
    name: str = "compute",
    dtype: str | None = None,
    tag: str = "",
) -> Tensor:
    """A tensor whose element at each index is ``fcompute(*index)``."""
    shape = _check_shape(shape, f"compute {name}")
    try:
        params = list(inspect.signature(fcompute).parameters)
    except (TypeError, ValueError):
        params = []
    if len(params) != len(shape) or any(p.startswith("*") for p in params):
        params = [f"i{n}" for n in range(len(shape))]
    axis = [IterVar(p if p not in ("_",) else f"ax{n}", ext) for n, (p, ext) in enumerate(zip(params, shape))]
    body = as_expr(fcompute(*axis))
    if isinstance(body, Reduce):
        pass
    else:
        for e in walk(body):
            if isinstance(e, Reduce):
                raise ValueError(f"compute {name}: a reduction must be the whole body, not nested in it")
    out_dtype = dtype or body.dtype
    if dtype is not None and body.dtype != dtype:
        body = body.astype(dtype)
    return ComputeOp(name, axis, body, out_dtype, tag).output
