"""Expression nodes of the tensor language.

Nodes are immutable and compared by identity (so variables can key dicts);
use ``te.equal`` for an equality *expression*. Python numbers are promoted to
constants of the other operand's type.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Union

T = TypeVar("T")

FLOAT_TYPES = ("float16", "float32", "float64")
INT_TYPES = ("int8", "int16", "int32", "int64", "uint8", "bool")
ALL_TYPES = FLOAT_TYPES + INT_TYPES

ExprLike = Union["Expr", int, float]


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_TYPES


def _promote(a: str, b: str) -> str:
    if a == b:
        return a
    fa, fb = is_float(a), is_float(b)
    if fa and not fb:
        return a
    if fb and not fa:
        return b
    order = ALL_TYPES
    return a if order.index(a) % 10 >= order.index(b) % 10 else b


def const(value: Any, dtype: str | None = None) -> Const:
    if dtype is None:
        dtype = "int32" if isinstance(value, (bool, int)) else "float32"
    return Const(value, dtype)


def as_expr(x: ExprLike, like: Expr | None = None) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool):
        return Const(int(x), "bool")
    if isinstance(x, int):
        if like is not None and is_float(like.dtype):
            return Const(float(x), like.dtype)
        return Const(x, like.dtype if like is not None and like.dtype in INT_TYPES else "int32")
    if isinstance(x, float):
        return Const(x, like.dtype if like is not None and is_float(like.dtype) else "float32")
    raise TypeError(f"cannot use {type(x).__name__} {x!r} in a tensor expression")


def _bin(op: str, a: ExprLike, b: ExprLike) -> Expr:
    ea = as_expr(a, b if isinstance(b, Expr) else None)
    eb = as_expr(b, ea)
    ea = as_expr(a, eb)
    return BinOp(op, ea, eb)


class Expr:
    """Base class of expressions."""

    dtype: str = "int32"

    __hash__ = object.__hash__

    def __add__(self, o: ExprLike) -> Expr:
        return _bin("+", self, o)

    def __radd__(self, o: ExprLike) -> Expr:
        return _bin("+", o, self)

    def __sub__(self, o: ExprLike) -> Expr:
        return _bin("-", self, o)

    def __rsub__(self, o: ExprLike) -> Expr:
        return _bin("-", o, self)

    def __mul__(self, o: ExprLike) -> Expr:
        return _bin("*", self, o)

    def __rmul__(self, o: ExprLike) -> Expr:
        return _bin("*", o, self)

    def __truediv__(self, o: ExprLike) -> Expr:
        return _bin("/", self, o)

    def __rtruediv__(self, o: ExprLike) -> Expr:
        return _bin("/", o, self)

    def __floordiv__(self, o: ExprLike) -> Expr:
        return _bin("//", self, o)

    def __rfloordiv__(self, o: ExprLike) -> Expr:
        return _bin("//", o, self)

    def __mod__(self, o: ExprLike) -> Expr:
        return _bin("%", self, o)

    def __neg__(self) -> Expr:
        return _bin("-", as_expr(0, self), self)

    def __lt__(self, o: ExprLike) -> Expr:
        return Cmp("<", self, as_expr(o, self))

    def __le__(self, o: ExprLike) -> Expr:
        return Cmp("<=", self, as_expr(o, self))

    def __gt__(self, o: ExprLike) -> Expr:
        return Cmp(">", self, as_expr(o, self))

    def __ge__(self, o: ExprLike) -> Expr:
        return Cmp(">=", self, as_expr(o, self))

    def __bool__(self) -> bool:
        raise TypeError("a tensor expression has no truth value; use te.if_then_else / te.all / te.any")

    # Conditions combine with & | ~ (TVM's habit); Python's and/or/not would call __bool__.
    def __and__(self, o: Expr) -> Expr:
        return all_of(_cond(self, "&"), _cond(o, "&"))

    def __rand__(self, o: Expr) -> Expr:
        return all_of(_cond(o, "&"), _cond(self, "&"))

    def __or__(self, o: Expr) -> Expr:
        return any_of(_cond(self, "|"), _cond(o, "|"))

    def __ror__(self, o: Expr) -> Expr:
        return any_of(_cond(o, "|"), _cond(self, "|"))

    def __invert__(self) -> Expr:
        return logical_not(_cond(self, "~"))

    def astype(self, dtype: str) -> Expr:
        return Cast(dtype, self)


class Const(Expr):
    def __init__(self, value: Any, dtype: str) -> None:
        if dtype not in ALL_TYPES:
            raise TypeError(f"unsupported dtype {dtype!r}")
        self.value = float(value) if is_float(dtype) else int(value)
        self.dtype = dtype

    def __repr__(self) -> str:
        return repr(self.value) if self.dtype in ("int32", "float32") else f"{self.dtype}({self.value})"


class Var(Expr):
    """An index variable. IterVar (a loop axis) is the usual kind."""

    def __init__(self, name: str, dtype: str = "int32") -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return self.name


class IterVar(Var):
    """A loop axis with extent ``extent``: data-parallel or reduction."""

    def __init__(self, name: str, extent: int, kind: str = "data") -> None:
        super().__init__(name)
        if not isinstance(extent, int) or extent < 1:
            raise ValueError(f"axis {name!r} needs a positive integer extent, got {extent!r}")
        self.extent = extent
        self.kind = kind  # "data" or "reduce"

    @property
    def dom(self) -> tuple[int, int]:
        return (0, self.extent)


class BinOp(Expr):
    OPS = ("+", "-", "*", "/", "//", "%", "min", "max")

    def __init__(self, op: str, a: Expr, b: Expr) -> None:
        assert op in self.OPS, op
        self.op, self.a, self.b = op, a, b
        self.dtype = _promote(a.dtype, b.dtype)
        if op in ("//", "%") and is_float(self.dtype):
            raise TypeError(f"{op} needs integer operands, got {a.dtype} and {b.dtype}")


class Cmp(Expr):
    def __init__(self, op: str, a: Expr, b: Expr) -> None:
        self.op, self.a, self.b = op, a, b
        self.dtype = "bool"


class Logic(Expr):
    """and / or / not over booleans."""

    def __init__(self, op: str, args: Sequence[Expr]) -> None:
        self.op, self.args = op, tuple(args)
        self.dtype = "bool"


class Select(Expr):
    """cond ? t : f. Only the chosen side is evaluated, so a guarded load is safe."""

    def __init__(self, cond: Expr, t: Expr, f: Expr) -> None:
        self.cond, self.t, self.f = cond, t, f
        self.dtype = _promote(t.dtype, f.dtype)


class Call(Expr):
    """A math intrinsic: exp, sqrt, log, tanh, abs, sigmoid..."""

    FUNCS = ("exp", "sqrt", "log", "tanh", "abs", "sigmoid", "floor", "ceil")

    def __init__(self, func: str, args: Sequence[Expr]) -> None:
        assert func in self.FUNCS
        self.func, self.args = func, tuple(args)
        self.dtype = args[0].dtype


class Cast(Expr):
    def __init__(self, dtype: str, x: Expr) -> None:
        if dtype not in ALL_TYPES:
            raise TypeError(f"unsupported dtype {dtype!r}")
        self.dtype, self.x = dtype, x


class Load(Expr):
    """tensor[indices]: a read of a tensor element (TensorSlice in TVM)."""

    def __init__(self, tensor: Any, indices: Sequence[Expr]) -> None:
        self.tensor, self.indices = tensor, tuple(indices)
        self.dtype = tensor.dtype


class Reduce(Expr):
    """A commutative reduction (sum/max/min) of ``source`` over ``axes``."""

    def __init__(self, combiner: str, source: Expr, axes: Sequence[IterVar], where: Expr | None = None) -> None:
        for ax in axes:
            if not isinstance(ax, IterVar) or ax.kind != "reduce":
                raise TypeError(f"reduction axis {ax!r} must come from te.reduce_axis")
        self.combiner, self.source, self.axes, self.where = combiner, source, tuple(axes), where
        self.dtype = source.dtype


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, (BinOp, Cmp)):
        return (e.a, e.b)
    if isinstance(e, Logic):
        return e.args
    if isinstance(e, Select):
        return (e.cond, e.t, e.f)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Cast):
        return (e.x,)
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, Reduce):
        return (e.source,) + ((e.where,) if e.where is not None else ())
    return ()


def rebuild(e: Expr, kids: Sequence[Expr]) -> Expr:
    """The node ``e`` with new children (same kind and attributes)."""
    if isinstance(e, BinOp):
        return BinOp(e.op, kids[0], kids[1])
    if isinstance(e, Cmp):
        return Cmp(e.op, kids[0], kids[1])
    if isinstance(e, Logic):
        return Logic(e.op, kids)
    if isinstance(e, Select):
        return Select(kids[0], kids[1], kids[2])
    if isinstance(e, Call):
        return Call(e.func, kids)
    if isinstance(e, Cast):
        return Cast(e.dtype, kids[0])
    if isinstance(e, Load):
        return Load(e.tensor, kids)
    if isinstance(e, Reduce):
        return Reduce(e.combiner, kids[0], e.axes, kids[1] if len(kids) > 1 else None)
    return e


def transform(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Post-order rewrite: ``fn`` returns a replacement or None to keep the node."""
    kids = children(e)
    if kids:
        new = [transform(k, fn) for k in kids]
        if any(n is not k for n, k in zip(new, kids)):
            e = rebuild(e, new)
    r = fn(e)
    return e if r is None else r


def substitute(e: Expr, mapping: dict[Var, Expr]) -> Expr:
    if not mapping:
        return e
    return transform(e, lambda x: mapping.get(x) if isinstance(x, Var) else None)


def preorder(root: T, children_of: Callable[[T], Iterable[T]]) -> Iterator[T]:
    """Every node of a tree, root first, with an explicit stack (deep nests overflow recursion)."""
    stack = [root]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(children_of(x))


def walk(e: Expr) -> Iterator[Expr]:
    """Every subexpression of ``e``, ``e`` first."""
    return preorder(e, children)


def free_vars(e: Expr) -> set[Var]:
    return {x for x in walk(e) if isinstance(x, Var)}


# --- the user-facing helpers -------------------------------------------------

def _reducer(combiner: str) -> Callable[..., Reduce]:
    def red(expr: ExprLike, axis: IterVar | Sequence[IterVar], where: Expr | None = None) -> Reduce:
        axes = [axis] if isinstance(axis, IterVar) else list(axis)
        return Reduce(combiner, as_expr(expr), axes, where)

    red.__name__ = combiner
    red.__doc__ = f"{combiner} of ``expr`` over the reduction axes ``axis``."
    return red


sum = _reducer("sum")  # noqa: A001 - mirrors te.sum
max = _reducer("max")  # noqa: A001
min = _reducer("min")  # noqa: A001


def select(cond: Expr, t: ExprLike, f: ExprLike) -> Expr:
    te = as_expr(t, f if isinstance(f, Expr) else None)
    fe = as_expr(f, te)
    te = as_expr(t, fe)
    return Select(cond, te, fe)


def if_then_else(cond: Expr, t: ExprLike, f: ExprLike) -> Expr:
    return select(cond, t, f)


def equal(a: ExprLike, b: ExprLike) -> Expr:
    ea = as_expr(a, b if isinstance(b, Expr) else None)
    return Cmp("==", ea, as_expr(b, ea))


def not_equal(a: ExprLike, b: ExprLike) -> Expr:
    ea = as_expr(a, b if isinstance(b, Expr) else None)
    return Cmp("!=", ea, as_expr(b, ea))


def _cond(e: Any, op: str) -> Expr:
    if not isinstance(e, Expr) or e.dtype != "bool":
        got = getattr(e, "dtype", type(e).__name__)
        raise TypeError(f"'{op}' combines conditions (comparisons, te.all/te.any), got {got}")
    return e


def all_of(*conds: Expr) -> Expr:
    return conds[0] if len(conds) == 1 else Logic("and", conds)


def any_of(*conds: Expr) -> Expr:
    return conds[0] if len(conds) == 1 else Logic("or", conds)


def logical_not(c: Expr) -> Expr:
    return Logic("not", [c])


def maximum(a: ExprLike, b: ExprLike) -> Expr:
    return _bin("max", a, b)


def minimum(a: ExprLike, b: ExprLike) -> Expr:
    return _bin("min", a, b)


def _unary(name: str) -> Callable[[ExprLike], Expr]:
    def fn(x: ExprLike) -> Expr:
        e = as_expr(x)
        if name not in ("abs",) and not is_float(e.dtype):
            raise TypeError(f"te.{name} needs a float argument, got {e.dtype}")
        return Call(name, [e])

    fn.__name__ = name
    return fn


exp = _unary("exp")
sqrt = _unary("sqrt")
log = _unary("log")
tanh = _unary("tanh")
abs = _unary("abs")  # noqa: A001
sigmoid = _unary("sigmoid")
floor = _unary("floor")
ceil = _unary("ceil")
