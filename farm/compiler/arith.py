"""Integer index arithmetic: linear forms, bounds and simplification.

Index expressions are kept as sums of coefficient * atom, where an atom is a
variable or an opaque non-linear subexpression. Division and modulo by a
constant resolve when the remainder part's bounds fit one period, which is
what turns ``(jo*bn + ji) // bn`` back into ``jo`` after packing.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

from farm.te.expr import BinOp, Const, Expr, Var, children, is_float, rebuild

Ranges = Mapping[Var, tuple[int, int]]  # inclusive [lo, hi]
Linear = tuple[dict[Expr, int], int]


def _lin_add(a: Linear, b: Linear, sign: int = 1) -> Linear:
    terms = dict(a[0])
    for k, v in b[0].items():
        terms[k] = terms.get(k, 0) + sign * v
        if terms[k] == 0:
            del terms[k]
    return terms, a[1] + sign * b[1]


def _lin_scale(a: Linear, c: int) -> Linear:
    if c == 0:
        return {}, 0
    return {k: v * c for k, v in a[0].items()}, a[1] * c


def _lin_bounds(lin: Linear, ranges: Ranges) -> tuple[int, int] | None:
    lo = hi = lin[1]
    for atom, c in lin[0].items():
        b = bounds(atom, ranges)
        if b is None:
            return None
        lo += c * b[0] if c > 0 else c * b[1]
        hi += c * b[1] if c > 0 else c * b[0]
    return lo, hi


def to_expr(lin: Linear) -> Expr:
    out: Expr | None = None
    for atom, c in sorted(lin[0].items(), key=lambda kv: (-abs(kv[1]), _name(kv[0]))):
        term = atom if c == 1 else BinOp("*", atom, Const(c, "int32"))
        out = term if out is None else BinOp("+", out, term)
    if out is None:
        return Const(lin[1], "int32")
    if lin[1] > 0:
        out = BinOp("+", out, Const(lin[1], "int32"))
    elif lin[1] < 0:
        out = BinOp("-", out, Const(-lin[1], "int32"))
    return out


def _name(e: Expr) -> str:
    return e.name if isinstance(e, Var) else "~"


_ATOMS: weakref.WeakValueDictionary[str, Expr] = weakref.WeakValueDictionary()


def skey(e: Expr) -> str:
    """Structural key; variables by identity (two loops may share a name)."""
    if isinstance(e, Var):
        return f"{e.name}#{id(e)}"
    if isinstance(e, Const):
        return f"{e.value}:{e.dtype}"
    kids = children(e)
    extra = getattr(e, "op", None) or getattr(e, "func", None) or getattr(e, "dtype", "")
    tensor = getattr(e, "tensor", None) or getattr(e, "buffer", None)
    tag = f"@{id(tensor)}" if tensor is not None else ""
    return f"{type(e).__name__}{extra}{tag}(" + ",".join(skey(k) for k in kids) + ")"


def _atom(e: Expr) -> Expr:
    # Equal non-linear subexpressions must be one atom so that they cancel.
    k = skey(e)
    got = _ATOMS.get(k)
    if got is None:
        _ATOMS[k] = e
        return e
    return got


def linear(e: Expr, ranges: Ranges) -> Linear:
    """``e`` as coefficients over atoms plus a constant (integer expressions only)."""
    if isinstance(e, Const):
        return {}, int(e.value)
    if isinstance(e, Var):
        return {e: 1}, 0
    if isinstance(e, BinOp) and not is_float(e.dtype):
        if e.op in ("+", "-"):
            return _lin_add(linear(e.a, ranges), linear(e.b, ranges), 1 if e.op == "+" else -1)
        if e.op == "*":
            la, lb = linear(e.a, ranges), linear(e.b, ranges)
            if not la[0]:
                return _lin_scale(lb, la[1])
            if not lb[0]:
                return _lin_scale(la, lb[1])
        if e.op in ("//", "%"):
            la, lb = linear(e.a, ranges), linear(e.b, ranges)
            if not lb[0] and lb[1] > 0:
                r = _divmod(la, lb[1], ranges, e.op)
                if r is not None:
                    return r
                return {_atom(BinOp(e.op, to_expr(la), Const(lb[1], "int32"))): 1}, 0
    return {_atom(simplify(e, ranges)): 1}, 0


def _divmod(lin: Linear, d: int, ranges: Ranges, op: str) -> Linear | None:
    if d == 1:
        return lin if op == "//" else ({}, 0)
    q: dict[Expr, int] = {}
    r: dict[Expr, int] = {}
    for atom, c in lin[0].items():
        if c % d == 0:
            q[atom] = c // d
        else:
            r[atom] = c
    rem: Linear = (r, lin[1] % d)
    quo: Linear = (q, lin[1] // d)
    b = _lin_bounds(rem, ranges)
    if b is None:
        return None
    k = b[0] // d
    if b[1] // d != k:
        return None
    if op == "//":
        return _lin_add(quo, ({}, k))
    return _lin_add(rem, ({}, -k * d))


def bounds(e: Expr, ranges: Ranges) -> tuple[int, int] | None:
    """Inclusive integer bounds of ``e`` given variable ranges, or None if unknown."""
    if isinstance(e, Const):
        return int(e.value), int(e.value)
    if isinstance(e, Var):
        return ranges.get(e)
    if isinstance(e, BinOp) and not is_float(e.dtype):
        a, b = bounds(e.a, ranges), bounds(e.b, ranges)
        if a is None or b is None:
            return None
        if e.op == "+":
            return a[0] + b[0], a[1] + b[1]
        if e.op == "-":
            return a[0] - b[1], a[1] - b[0]
        if e.op == "*":
            ps = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
            return min(ps), max(ps)
        if e.op == "min":
            return min(a[0], b[0]), min(a[1], b[1])
        if e.op == "max":
            return max(a[0], b[0]), max(a[1], b[1])
        if e.op in ("//", "%") and b[0] == b[1] and b[0] > 0 and a[0] >= 0:
            d = b[0]
            if e.op == "//":
                return a[0] // d, a[1] // d
            return (a[0] % d, a[1] % d) if a[0] // d == a[1] // d else (0, d - 1)
    return None


def linear_bounds(e: Expr, ranges: Ranges) -> tuple[int, int] | None:
    """Tighter bounds through the linear form (cancels x - x)."""
    if is_float(e.dtype):
        return None
    b1 = _lin_bounds(linear(e, ranges), ranges)
    b2 = bounds(e, ranges)
    if b1 is None:
        return b2
    if b2 is None:
        return b1
    return max(b1[0], b2[0]), min(b1[1], b2[1])


def within(indices: Sequence[Expr], shape: Sequence[int], ranges: Ranges) -> bool:
    """Whether every index provably stays inside its dimension over the variables' ranges."""
    for i, d in zip(indices, shape):
        b = linear_bounds(i, ranges)
        if b is None or b[0] < 0 or b[1] >= d:
            return False
    return True


def simplify(e: Expr, ranges: Ranges) -> Expr:
    """Canonical form for integer index expressions; folds constants elsewhere."""
    if isinstance(e, (Const, Var)):
        return e
    if isinstance(e, BinOp) and not is_float(e.dtype) and e.op in ("+", "-", "*", "//", "%"):
        lin = linear(e, ranges)
        if len(lin[0]) == 1 and lin[1] == 0:
            (atom, c), = lin[0].items()
            if c == 1 and atom is not e and isinstance(atom, BinOp) and atom.op in ("//", "%"):
                return atom
        return to_expr(lin)
    kids = children(e)
    if not kids:
        return e
    new = [simplify(k, ranges) for k in kids]
    return rebuild(e, new) if any(n is not k for n, k in zip(new, kids)) else e


def coefficient(e: Expr, v: Var, ranges: Ranges) -> int | None:
    """d e / d v when ``e`` is affine in ``v`` (other atoms free of v); None if not."""
    from farm.te.expr import free_vars

    terms, _ = linear(e, ranges)
    c = 0
    for atom, k in terms.items():
        if atom is v:
            c = k
        elif v in free_vars(atom):
            return None
    return c
