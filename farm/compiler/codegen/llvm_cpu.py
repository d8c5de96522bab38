"""LLVM IR for CPU targets from the loop-nest IR.

Unrolled loops are replicated with constant indices and vectorized loops are
emitted as LLVM vector code, so a register tile of C (a local buffer with
constant indices) is promoted to vector registers by SROA/mem2reg. A
vectorized loop the vector model cannot express (lane-dependent guards,
strided stores, guarded loads) falls back to a scalar loop: vectorize is a
request, correctness is not negotiable.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from llvmlite import ir

from farm.compiler import arith
from farm.compiler.codegen.llvm_expr import ExprCodegen, _bytes, _conj, ir_type
from farm.compiler.codegen.runtime import BODY_TY, I8P, I32, I64, emit_entries, emit_runtime
from farm.compiler.ir import (
    Allocate,
    Block,
    Buffer,
    For,
    IfThenElse,
    PrimFunc,
    Stmt,
    Store,
    walk_stmts,
)
from farm.errors import CompileError
from farm.te.expr import BinOp, Const, Expr, Logic, Var, free_vars, substitute

log = logging.getLogger(__name__)

MAX_UNROLL = 64
MAX_LANES = 64
MAX_UNROLLED_STMTS = 256  # beyond this LLVM's compile time explodes for little gain
ALLOCA_LIMIT = 4 << 20


@dataclass
class _Ctx:
    fn: ir.Function
    builder: ir.IRBuilder
    alloca_builder: ir.IRBuilder
    env: dict[Var, ir.Value] = field(default_factory=dict)
    bufs: dict[Buffer, ir.Value] = field(default_factory=dict)
    in_parallel: bool = False


class CpuCodegen(ExprCodegen):
    """Turns one PrimFunc into an LLVM module with the ABI in farm.records.artifact."""

    def __init__(self, triple: str, data_layout: str, vector_lanes: int = 16) -> None:  # noqa: D107
        self.mod = ir.Module(name="kernelfarm")
        self.mod.triple = triple
        self.mod.data_layout = data_layout
        self.ctx: _Ctx
        self.vec: tuple[Var, int] | None = None
        self.vec_base = 0  # the loop value of lane 0 in the current vector chunk
        self.pad_mode = False  # inside a tile-padding guard that was dropped (see if_)
        self.pad_lane: list[Expr] = []
        self.native_lanes = max(1, vector_lanes)
        self.mask: ir.Value | None = None  # active lanes under a lane-dependent guard
        self.ranges: dict[Var, tuple[int, int]] = {}
        self.globals: dict[Buffer, ir.Value] = {}
        self.n_outlined = 0

    # --- module --------------------------------------------------------------
    def generate(self, f: PrimFunc) -> ir.Module:
        self.pfor = emit_runtime(self.mod)
        for g in f.globals:
            gv = ir.GlobalVariable(self.mod, ir.ArrayType(ir_type(g.dtype), g.size), f"kf_buf_{g.name}")
            gv.initializer = ir.Constant(gv.type.pointee, None)
            gv.linkage = "internal"
            gv.align = 64
            self.globals[g] = gv
        fnty = ir.FunctionType(ir.VoidType(), [ir_type(b.dtype).as_pointer() for b in f.params])
        kern = ir.Function(self.mod, fnty, f"kf_kernel_{f.name}")
        kern.linkage = "internal"
        for a, b in zip(kern.args, f.params):
            a.name = b.name
            a.add_attribute("noalias")
        ctx = self._new_ctx(kern)
        for a, b in zip(kern.args, f.params):
            ctx.bufs[b] = a
        for g, gv in self.globals.items():
            ctx.bufs[g] = ctx.builder.bitcast(gv, ir_type(g.dtype).as_pointer())
        self.ctx = ctx
        self.stmt(f.body)
        self.ctx.builder.ret_void()
        self._close_ctx(ctx)
        emit_entries(self.mod, kern)
        return self.mod

    def _new_ctx(self, fn: ir.Function) -> _Ctx:
        entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        return _Ctx(fn, ir.IRBuilder(body), ir.IRBuilder(entry))

    def _close_ctx(self, ctx: _Ctx) -> None:
        ctx.alloca_builder.position_at_end(ctx.fn.entry_basic_block)
        ctx.alloca_builder.branch(ctx.fn.basic_blocks[1])

    @property
    def b(self) -> ir.IRBuilder:
        return self.ctx.builder

    # --- statements ----------------------------------------------------------
    def stmt(self, s: Stmt) -> None:
        if isinstance(s, Block):
            for x in s.stmts:
                self.stmt(x)
        elif isinstance(s, For):
            self.for_(s)
        elif isinstance(s, Store):
            self.store(s)
        elif isinstance(s, IfThenElse):
            self.if_(s)
        elif isinstance(s, Allocate):
            self.allocate(s)
        else:
            raise CompileError(f"cannot generate code for {type(s).__name__}")

    def allocate(self, s: Allocate) -> None:
        buf = s.buffer
        nbytes = buf.size * (ir_type(buf.dtype).width // 8 if isinstance(ir_type(buf.dtype), ir.IntType) else 4)
        if nbytes > ALLOCA_LIMIT:
            raise CompileError(
                f"local buffer {buf.name} needs {nbytes} bytes; local tiles are limited to {ALLOCA_LIMIT}"
            )
        ptr = self.ctx.alloca_builder.alloca(ir_type(buf.dtype), buf.size, name=buf.name)
        ptr.align = 64
        self.ctx.bufs[buf] = ptr
        self.stmt(s.body)

    def if_(self, s: IfThenElse) -> None:
        if s.tile_pad and s.orelse is None and not self.pad_mode and self._pad_droppable(s.then):
            # Rows/lanes past the tensor's edge in a local tile are computed and
            # never copied out; loads that could leave their buffer are clamped
            # (uniform) or masked (per lane) instead of branching in the hot loop.
            lane = self._split_guard(s.cond)[1] if self.vec is not None else []
            self.pad_mode, self.pad_lane = True, lane
            try:
                self.stmt(s.then)
            finally:
                self.pad_mode, self.pad_lane = False, []
            return
        if self.vec is not None and s.orelse is None:
            uniform, lane = self._split_guard(s.cond)
            if uniform and lane:
                with self.b.if_then(self.expr(_conj(uniform))):
                    self.if_(IfThenElse(_conj(lane), s.then))
                return
            if not lane:
                with self.b.if_then(self.expr(_conj(uniform))) if uniform else _null():
                    self.stmt(s.then)
                return
        cond = self.expr(s.cond)
        if isinstance(cond.type, ir.VectorType):
            # A guard that differs per lane (a tail): predicate the lanes instead of
            # branching, but take an unmasked fast path when every lane passes,
            # which is all tiles but the last.
            if s.orelse is None and self.mask is None:
                allv = self.b.call(
                    self._intrinsic("llvm.vector.reduce.and", ir.IntType(1), [cond.type], [cond.type]), [cond]
                )
                with self.b.if_else(allv) as (full, part):
                    with full:
                        self.stmt(s.then)
                    with part:
                        self.mask = cond
                        try:
                            self.stmt(s.then)
                        finally:
                            self.mask = None
                return
            outer = self.mask
            try:
                self.mask = cond if outer is None else self.b.and_(outer, cond)
                self.stmt(s.then)
                if s.orelse is not None:
                    inv = self.b.not_(cond)
                    self.mask = inv if outer is None else self.b.and_(outer, inv)
                    self.stmt(s.orelse)
            finally:
                self.mask = outer
            return
        if s.orelse is None:
            with self.b.if_then(cond):
                self.stmt(s.then)
        else:
            with self.b.if_else(cond) as (then, orelse):
                with then:
                    self.stmt(s.then)
                with orelse:
                    self.stmt(s.orelse)

    def _split_guard(self, cond: Expr) -> tuple[list[Expr], list[Expr]]:
        assert self.vec is not None
        parts = list(cond.args) if isinstance(cond, Logic) and cond.op == "and" else [cond]
        uniform = [c for c in parts if self.vec[0] not in free_vars(c)]
        return uniform, [c for c in parts if self.vec[0] in free_vars(c)]

    def _pad_droppable(self, body: Stmt) -> bool:
        """The guarded body only stores into a local tile, in bounds."""
        for st in walk_stmts(body):
            if isinstance(st, (For, Allocate)):
                return False
            if isinstance(st, Store) and (st.buffer.kind != "local" or not self._in_bounds(st.buffer, st.indices)):
                return False
        return True

    def _in_bounds(self, buf: Buffer, indices: tuple[Expr, ...]) -> bool:
        return arith.within(indices, buf.shape, self.ranges)

    def for_(self, s: For) -> None:
        self.ranges[s.var] = (0, s.extent - 1)
        kind = s.kind
        if kind == "bind":
            raise CompileError(f"loop {s.var.name} is bound to {s.tag}: GPU bindings need a cuda target")
        if kind == "parallel" and self.ctx.in_parallel:
            kind = "serial"  # nested parallel regions run serially inside a worker
        if kind == "unroll" and s.extent <= MAX_UNROLL and s.extent * _unrolled_size(s.body) <= MAX_UNROLLED_STMTS:
            for n in range(s.extent):
                self.ctx.env[s.var] = I64(n)
                self.stmt(s.body)
            del self.ctx.env[s.var]
            return
        if kind == "vectorize":
            if self.vec is None and 1 < s.extent <= MAX_LANES and self._vectorizable(s.body, s.var):
                # Chunks of the native width: LLVM legalizes odd wide vectors (48 lanes) badly.
                L = self.native_lanes
                try:
                    for base in range(0, s.extent, L):
                        self.vec = (s.var, min(L, s.extent - base))
                        self.vec_base = base
                        self.ctx.env[s.var] = I64(base)
                        self.stmt(s.body)
                finally:
                    self.vec = None
                    self.vec_base = 0
                    self.ctx.env.pop(s.var, None)
                return
            log.debug("loop %s: vectorize falls back to a scalar loop", s.var.name)
        if kind == "parallel" and s.extent > 1:
            self.parallel(s)
            return
        self.serial_loop(s.var, I64(0), I64(s.extent), s.body)

    def serial_loop(self, var: Var, begin: ir.Value, end: ir.Value, body: Stmt) -> None:
        b = self.b
        pre = b.block
        head = b.append_basic_block(f"for.{var.name}")
        loop = b.append_basic_block(f"for.{var.name}.body")
        after = b.append_basic_block(f"for.{var.name}.end")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=var.name)
        i.add_incoming(begin, pre)
        b.cbranch(b.icmp_signed("<", i, end), loop, after)
        b.position_at_end(loop)
        self.ctx.env[var] = i
        self.stmt(body)
        del self.ctx.env[var]
        nxt = self.b.add(i, I64(1), flags=("nsw",))
        i.add_incoming(nxt, self.b.block)
        self.b.branch(head)
        self.b.position_at_end(after)

    def parallel(self, s: For) -> None:
        """Outline the loop body into a function and run it through kf_parallel_for."""
        outer = self.ctx
        live_vars = [v for v in outer.env]
        live_bufs = [bf for bf in outer.bufs if bf not in self.globals]
        fields = [outer.env[v].type for v in live_vars] + [outer.bufs[bf].type for bf in live_bufs]
        clo_ty = ir.LiteralStructType(fields) if fields else ir.LiteralStructType([I64])
        clo = outer.alloca_builder.alloca(clo_ty, name="closure")
        for n, val in enumerate([outer.env[v] for v in live_vars] + [outer.bufs[bf] for bf in live_bufs]):
            outer.builder.store(val, outer.builder.gep(clo, [I32(0), I32(n)]))
        self.n_outlined += 1
        fn = ir.Function(self.mod, BODY_TY, f"kf_par_{self.n_outlined}_{s.var.name.replace('.', '_')}")
        fn.linkage = "internal"
        inner = self._new_ctx(fn)
        inner.in_parallel = True
        cp = inner.builder.bitcast(fn.args[0], clo_ty.as_pointer())
        for n, v in enumerate(live_vars):
            inner.env[v] = inner.builder.load(inner.builder.gep(cp, [I32(0), I32(n)]))
        for n, bf in enumerate(live_bufs):
            inner.bufs[bf] = inner.builder.load(inner.builder.gep(cp, [I32(0), I32(len(live_vars) + n)]))
        for g, gv in self.globals.items():
            inner.bufs[g] = inner.builder.bitcast(gv, ir_type(g.dtype).as_pointer())
        self.ctx = inner
        self.serial_loop(s.var, fn.args[1], fn.args[2], s.body)
        self.ctx.builder.ret_void()
        self._close_ctx(inner)
        self.ctx = outer
        self.b.call(self.pfor, [fn, self.b.bitcast(clo, I8P), I64(s.extent)])

    # --- vector model ----------------------------------------------------------
    def _vectorizable(self, body: Stmt, v: Var) -> bool:
        for s in walk_stmts(body):
            if isinstance(s, For):
                return False
            if isinstance(s, Store):
                flat = self._flat(s.buffer, s.indices)
                if arith.coefficient(flat, v, self.ranges) != 1:
                    return False
        return True

    def _flat(self, buf: Buffer, indices: tuple[Expr, ...]) -> Expr:
        if len(indices) != len(buf.shape):
            raise CompileError(f"buffer {buf.name} indexed with {len(indices)} indices, has {len(buf.shape)} dims")
        flat: Expr = Const(0, "int32")
        for i, st in zip(indices, buf.strides):
            flat = BinOp("+", flat, BinOp("*", i, Const(st, "int32")))
        return arith.simplify(flat, self.ranges)

    def _address(self, buf: Buffer, indices: tuple[Expr, ...]) -> tuple[ir.Value, int | None]:
        """Pointer to lane 0's element and the stride in the vector lane (None: no vector var)."""
        flat = self._flat(buf, indices)
        coef: int | None = None
        if self.vec is not None and self.vec[0] in free_vars(flat):
            coef = arith.coefficient(flat, self.vec[0], self.ranges)
            flat = (
                arith.simplify(substitute(flat, {self.vec[0]: Const(self.vec_base, "int32")}), self.ranges)
                if coef is not None
                else flat
            )
            if coef is None:
                return self.ctx.bufs[buf], None  # gather: caller evaluates lane by lane
        idx = self.index(flat)
        return self.b.gep(self.ctx.bufs[buf], [idx], inbounds=True), (coef if coef is not None else 0)

    def store(self, s: Store) -> None:
        val = self.expr(s.value)
        elem = ir_type(s.buffer.dtype)
        val = self._convert(val, s.value.dtype, s.buffer.dtype)
        val = self._narrow(val, elem)
        ptr, coef = self._address(s.buffer, s.indices)
        if self.vec is not None and coef == 1:
            lanes = self.vec[1]
            vt = ir.VectorType(elem, lanes)
            if not isinstance(val.type, ir.VectorType):
                val = self._splat(val, lanes)
            vptr = self.b.bitcast(ptr, vt.as_pointer())
            if self.mask is not None:
                fn = self._intrinsic(
                    "llvm.masked.store", ir.VoidType(), [vt, vt.as_pointer(), I32, self.mask.type], [vt]
                )
                self.b.call(fn, [val, vptr, I32(_bytes(elem)), self.mask])
                return
            st = self.b.store(val, vptr)
            st.align = _bytes(elem)
            return
        if isinstance(val.type, ir.VectorType):
            raise CompileError("internal: vector value stored to a scalar location")
        self.b.store(val, ptr)

    # --- expressions -----------------------------------------------------------


@contextlib.contextmanager
def _null():  # type: ignore[no-untyped-def]
    yield


def _unrolled_size(s: Stmt) -> int:
    """Stores the body becomes once its own unrolled loops are replicated."""
    if isinstance(s, Store):
        return 1
    if isinstance(s, For):
        inner = _unrolled_size(s.body)
        return inner * s.extent if s.kind == "unroll" else inner
    if isinstance(s, Block):
        return sum(_unrolled_size(x) for x in s.stmts)
    if isinstance(s, IfThenElse):
        return _unrolled_size(s.then) + (_unrolled_size(s.orelse) if s.orelse is not None else 0)
    if isinstance(s, Allocate):
        return _unrolled_size(s.body)
    return 1
