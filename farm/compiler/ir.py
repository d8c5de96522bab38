"""The lowered loop-nest IR and its printer (TVM's TIR, in miniature)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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
    is_float,
    preorder,
)


class Buffer:
    """A flat memory region: a kernel argument, a global intermediate or a local tile."""

    __hash__ = object.__hash__

    def __init__(self, name: str, shape: Sequence[int], dtype: str, scope: str, kind: str) -> None:
        self.name, self.shape, self.dtype, self.scope, self.kind = name, tuple(shape), dtype, scope, kind

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def strides(self) -> tuple[int, ...]:
        out, acc = [], 1
        for d in reversed(self.shape):
            out.append(acc)
            acc *= d
        return tuple(reversed(out))

    def __repr__(self) -> str:
        return self.name


class BufferLoad(Expr):
    def __init__(self, buffer: Buffer, indices: Sequence[Expr]) -> None:
        self.buffer, self.indices = buffer, tuple(indices)
        self.dtype = buffer.dtype


class Stmt:
    pass


@dataclass
class For(Stmt):
    var: IterVar
    extent: int
    kind: str  # serial | parallel | vectorize | unroll | bind
    body: Stmt
    tag: str = ""


@dataclass
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr


@dataclass
class IfThenElse(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None
    tile_pad: bool = False  # guards only tile positions past a tensor's edge (droppable)


@dataclass
class Allocate(Stmt):
    buffer: Buffer
    body: Stmt


@dataclass
class Block(Stmt):
    stmts: list[Stmt] = field(default_factory=list)


@dataclass
class PrimFunc:
    name: str
    params: list[Buffer]
    body: Stmt
    globals: list[Buffer]
    flops: float = 0.0


def expr_children(e: Expr) -> tuple[Expr, ...]:
    return e.indices if isinstance(e, BufferLoad) else children(e)


def stmt_children(s: Stmt) -> list[Stmt]:
    if isinstance(s, (For, Allocate)):
        return [s.body]
    if isinstance(s, IfThenElse):
        return [s.then] + ([s.orelse] if s.orelse is not None else [])
    if isinstance(s, Block):
        return list(s.stmts)
    return []


def walk_stmts(s: Stmt) -> Iterator[Stmt]:
    """Every statement of a nest, ``s`` first."""
    return preorder(s, stmt_children)


def walk_expr(e: Expr) -> Iterator[Expr]:
    """Every subexpression, through buffer loads' indices, ``e`` first."""
    return preorder(e, expr_children)


# --- printing ----------------------------------------------------------------

_PREC = {
    "||": 1,
    "&&": 2,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "==": 3,
    "!=": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "//": 5,
    "%": 5,
}


def expr_str(e: Expr, prec: int = 0) -> str:
    if isinstance(e, Const):
        if is_float(e.dtype):
            s = repr(float(e.value))
            return s + "f" if e.dtype == "float32" else f"{e.dtype}({s})"
        return str(e.value)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, BufferLoad):
        return f"{e.buffer.name}[{', '.join(expr_str(i) for i in e.indices)}]"
    if isinstance(e, Load):
        return f"{e.tensor.name}[{', '.join(expr_str(i) for i in e.indices)}]"
    if isinstance(e, BinOp):
        if e.op in ("min", "max"):
            return f"{e.op}({expr_str(e.a)}, {expr_str(e.b)})"
        p = _PREC[e.op]
        s = f"{expr_str(e.a, p)} {e.op} {expr_str(e.b, p + 1)}"
        return f"({s})" if p < prec else s
    if isinstance(e, Cmp):
        p = _PREC[e.op]
        s = f"{expr_str(e.a, p + 1)} {e.op} {expr_str(e.b, p + 1)}"
        return f"({s})" if p < prec else s
    if isinstance(e, Logic):
        if e.op == "not":
            return f"!{expr_str(e.args[0], 9)}"
        sym = "&&" if e.op == "and" else "||"
        s = f" {sym} ".join(expr_str(a, _PREC[sym] + 1) for a in e.args)
        return f"({s})" if _PREC[sym] < prec else s
    if isinstance(e, Select):
        return f"select({expr_str(e.cond)}, {expr_str(e.t)}, {expr_str(e.f)})"
    if isinstance(e, Call):
        return f"{e.func}({', '.join(expr_str(a) for a in e.args)})"
    if isinstance(e, Cast):
        return f"{e.dtype}({expr_str(e.x)})"
    if isinstance(e, Reduce):
        return f"{e.combiner}({expr_str(e.source)}, axis=[{', '.join(a.name for a in e.axes)}])"
    return repr(e)


def stmt_str(s: Stmt, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(s, Block):
        return "".join(stmt_str(x, indent) for x in s.stmts)
    if isinstance(s, For):
        kind = "" if s.kind == "serial" else f"  // {s.kind}" + (f" {s.tag}" if s.tag else "")
        return f"{pad}for ({s.var.name}, 0, {s.extent}) {{{kind}\n{stmt_str(s.body, indent + 1)}{pad}}}\n"
    if isinstance(s, Store):
        return f"{pad}{s.buffer.name}[{', '.join(expr_str(i) for i in s.indices)}] = {expr_str(s.value)}\n"
    if isinstance(s, IfThenElse):
        out = f"{pad}if ({expr_str(s.cond)}) {{\n{stmt_str(s.then, indent + 1)}{pad}}}\n"
        if s.orelse is not None:
            out = out[:-1] + f" else {{\n{stmt_str(s.orelse, indent + 1)}{pad}}}\n"
        return out
    if isinstance(s, Allocate):
        b = s.buffer
        return f"{pad}allocate {b.name}: {b.dtype}[{', '.join(map(str, b.shape))}], {b.scope}\n" + stmt_str(
            s.body, indent
        )
    return f"{pad}{s!r}\n"


def func_str(f: PrimFunc) -> str:
    params = ", ".join(f"{b.name}: {b.dtype}[{', '.join(map(str, b.shape))}]" for b in f.params)
    out = f"@kernel\ndef {f.name}({params}):\n"
    for g in f.globals:
        out += f"  allocate {g.name}: {g.dtype}[{', '.join(map(str, g.shape))}], global\n"
    return out + stmt_str(f.body, 1)
