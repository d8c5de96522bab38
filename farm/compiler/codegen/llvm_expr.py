"""LLVM IR for expressions: loads (masked, clamped or gathered), arithmetic, conversions, selects
and intrinsic calls, scalar or as vectors of the lanes of the loop being vectorized.

A mixin of ``CpuCodegen`` (llvm_cpu.py), which emits the statements and loops around them and owns
the state used here: the builder, the vectorized loop, the lane mask and the bounds of loop variables.
"""
from __future__ import annotations

import logging

from llvmlite import ir

from farm.compiler import arith
from farm.compiler.codegen.runtime import I32, I64
from farm.compiler.ir import (
    BufferLoad,
    walk_expr,
)
from farm.errors import CompileError
from farm.te.expr import BinOp, Call, Cast, Cmp, Const, Expr, Logic, Select, Var, free_vars, is_float, substitute

log = logging.getLogger(__name__)

FAST = ("fast",)


def ir_type(dtype: str) -> ir.Type:
    return {
        "float32": ir.FloatType(), "float64": ir.DoubleType(), "float16": ir.HalfType(),
        "int8": ir.IntType(8), "uint8": ir.IntType(8), "int16": ir.IntType(16),
        "int32": ir.IntType(32), "int64": I64, "bool": ir.IntType(1),
    }[dtype]


class ExprCodegen:
    """Expression half of the CPU code generator (see the module docstring)."""

    def index(self, e: Expr) -> ir.Value:
        v = self.expr(e)
        if isinstance(v.type, ir.VectorType):
            raise CompileError("internal: vector-valued index")
        return v

    def expr(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Const):
            if is_float(e.dtype):
                return ir_type(e.dtype)(e.value)
            return ir.IntType(1)(e.value) if e.dtype == "bool" else I64(e.value)
        if isinstance(e, Var):
            if self.vec is not None and e is self.vec[0]:
                return ir.Constant(
                    ir.VectorType(I64, self.vec[1]), [I64(self.vec_base + n) for n in range(self.vec[1])]
                )
            if e not in self.ctx.env:
                raise CompileError(f"variable {e.name} is used outside its loop")
            return self.ctx.env[e]
        if isinstance(e, BufferLoad):
            return self.load(e)
        if isinstance(e, BinOp):
            return self.binop(e)
        if isinstance(e, Cmp):
            x, y = self._pair(self.expr(e.a), self.expr(e.b))
            if is_float(e.a.dtype) or is_float(e.b.dtype):
                return b.fcmp_ordered(e.op, x, y)
            return b.icmp_signed(e.op, x, y)
        if isinstance(e, Logic):
            vals = [self.expr(a) for a in e.args]
            if e.op == "not":
                return b.not_(vals[0])
            acc = vals[0]
            for v in vals[1:]:
                acc, v = self._pair(acc, v)
                acc = b.and_(acc, v) if e.op == "and" else b.or_(acc, v)
            return acc
        if isinstance(e, Select):
            return self.select(e)
        if isinstance(e, Cast):
            return self._convert(self.expr(e.x), e.x.dtype, e.dtype)
        if isinstance(e, Call):
            return self.call(e)
        raise CompileError(f"cannot generate code for expression {type(e).__name__}")

    def load(self, e: BufferLoad) -> ir.Value:
        if self.pad_mode and not self._in_bounds(e.buffer, e.indices):
            lane_dep = self.vec is not None and any(self.vec[0] in free_vars(i) for i in e.indices)
            if lane_dep and self.pad_lane and self.mask is None:
                self.mask = self.expr(_conj(self.pad_lane))
                try:
                    return self._load(e)
                finally:
                    self.mask = None
            if not lane_dep:
                clamped = [BinOp("min", BinOp("max", i, Const(0, "int32")), Const(d - 1, "int32"))
                           for i, d in zip(e.indices, e.buffer.shape)]
                return self._load(BufferLoad(e.buffer, clamped))
        return self._load(e)

    def _load(self, e: BufferLoad) -> ir.Value:
        elem = ir_type(e.buffer.dtype)
        ptr, coef = self._address(e.buffer, e.indices)
        if coef is None:  # gather
            assert self.vec is not None
            var, lanes = self.vec
            flat = self._flat(e.buffer, e.indices)
            out = ir.Constant(ir.VectorType(elem, lanes), ir.Undefined)
            for n in range(lanes):
                idx = self._lane_safe(
                    self.index(arith.simplify(substitute(flat, {var: Const(self.vec_base + n, "int32")}), self.ranges)),
                    n,
                )
                x = self.b.load(self.b.gep(self.ctx.bufs[e.buffer], [idx], inbounds=True))
                out = self.b.insert_element(out, x, I32(n))
            return self._widen(out, e.buffer.dtype)
        if self.vec is not None and coef == 1:
            vt = ir.VectorType(elem, self.vec[1])
            vptr = self.b.bitcast(ptr, vt.as_pointer())
            if self.mask is not None:
                fn = self._intrinsic("llvm.masked.load", vt, [vt.as_pointer(), I32, self.mask.type, vt], [vt])
                ld = self.b.call(fn, [vptr, I32(_bytes(elem)), self.mask, ir.Constant(vt, None)])
                return self._widen(ld, e.buffer.dtype)
            ld = self.b.load(vptr)
            ld.align = _bytes(elem)
            return self._widen(ld, e.buffer.dtype)
        if self.vec is not None and coef not in (0, None):
            var, lanes = self.vec
            base = self.index(self._flat_lane0(e))
            out = ir.Constant(ir.VectorType(elem, lanes), ir.Undefined)
            for n in range(lanes):
                idx = self._lane_safe(self.b.add(base, I64(n * coef)), n)
                x = self.b.load(self.b.gep(self.ctx.bufs[e.buffer], [idx], inbounds=True))
                out = self.b.insert_element(out, x, I32(n))
            return self._widen(out, e.buffer.dtype)
        if self.vec is not None and self.mask is not None:
            # Uniform address under a lane mask: only touch memory if some lane is live.
            anyl = self.b.call(
                self._intrinsic("llvm.vector.reduce.or", ir.IntType(1), [self.mask.type], [self.mask.type]), [self.mask]
            )
            idx = self.b.select(anyl, self.index(self._flat_lane0(e)), I64(0))
            return self._widen(self.b.load(self.b.gep(self.ctx.bufs[e.buffer], [idx], inbounds=True)), e.buffer.dtype)
        return self._widen(self.b.load(ptr), e.buffer.dtype)

    def _flat_lane0(self, e: BufferLoad) -> Expr:
        flat = self._flat(e.buffer, e.indices)
        if self.vec is not None:
            flat = arith.simplify(substitute(flat, {self.vec[0]: Const(self.vec_base, "int32")}), self.ranges)
        return flat

    def _lane_safe(self, idx: ir.Value, lane: int) -> ir.Value:
        """Index 0 (always valid) for a lane the mask switched off."""
        if self.mask is None:
            return idx
        return self.b.select(self.b.extract_element(self.mask, I32(lane)), idx, I64(0))

    def _intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type], overload: list[ir.Type]) -> ir.Function:
        full = name + "".join("." + _mangle(t) for t in overload) + (".p0" if "masked" in name else "")
        fn = self.mod.globals.get(full)
        if fn is None:
            fn = ir.Function(self.mod, ir.FunctionType(ret, args), full)
        return fn

    def _widen(self, v: ir.Value, dtype: str) -> ir.Value:
        # Integers compute in i64 (indices and data alike); narrow on store.
        if not is_float(dtype) and dtype not in ("int64", "bool"):
            t = ir.VectorType(I64, v.type.count) if isinstance(v.type, ir.VectorType) else I64
            return self.b.zext(v, t) if dtype == "uint8" else self.b.sext(v, t)
        return v

    def _convert(self, v: ir.Value, src: str, dst: str) -> ir.Value:
        b = self.b
        vec = v.type.count if isinstance(v.type, ir.VectorType) else 0

        def ty(t: ir.Type) -> ir.Type:
            return ir.VectorType(t, vec) if vec else t

        if is_float(dst):
            want = ty(ir_type(dst))
            if v.type == want:
                return v
            if is_float(src):
                return b.fpext(v, want) if _fbytes(ir_type(dst)) > _fbytes(ir_type(src)) else b.fptrunc(v, want)
            return b.uitofp(v, want) if src in ("bool", "uint8") else b.sitofp(v, want)
        # Integers live in i64 in registers (see _widen); narrowing happens on store.
        want = ty(ir.IntType(1) if dst == "bool" else I64)
        if is_float(src):
            return b.fptosi(v, want) if dst != "bool" else b.fcmp_ordered("!=", v, ir.Constant(v.type, 0.0))
        if v.type == want:
            return v
        elt = v.type.element if vec else v.type
        if dst == "bool":
            return b.icmp_signed(
                "!=", v, ir.Constant(v.type, 0) if not vec else ir.Constant(v.type, [ir.Constant(elt, 0)] * vec)
            )
        return b.zext(v, want) if elt.width == 1 or src == "uint8" else b.sext(v, want)

    def _narrow(self, v: ir.Value, elem: ir.Type) -> ir.Value:
        if not isinstance(elem, ir.IntType):
            return v
        vec = isinstance(v.type, ir.VectorType)
        have = v.type.element if vec else v.type
        if have == elem:
            return v
        want = ir.VectorType(elem, v.type.count) if vec else elem
        return self.b.trunc(v, want) if have.width > elem.width else self.b.zext(v, want)

    def _splat(self, v: ir.Value, lanes: int) -> ir.Value:
        vt = ir.VectorType(v.type, lanes)
        x = self.b.insert_element(ir.Constant(vt, ir.Undefined), v, I32(0))
        return self.b.shuffle_vector(
            x, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), [I32(0)] * lanes)
        )

    def _pair(self, x: ir.Value, y: ir.Value) -> tuple[ir.Value, ir.Value]:
        xv, yv = isinstance(x.type, ir.VectorType), isinstance(y.type, ir.VectorType)
        if xv and not yv:
            y = self._splat(y, x.type.count)
        elif yv and not xv:
            x = self._splat(x, y.type.count)
        return x, y

    def binop(self, e: BinOp) -> ir.Value:
        b = self.b
        x, y = self._pair(self.expr(e.a), self.expr(e.b))
        x = self._convert(x, e.a.dtype, e.dtype) if e.a.dtype != e.dtype else x
        y = self._convert(y, e.b.dtype, e.dtype) if e.b.dtype != e.dtype else y
        if is_float(e.dtype):
            if e.op == "+":
                return b.fadd(x, y, flags=FAST)
            if e.op == "-":
                return b.fsub(x, y, flags=FAST)
            if e.op == "*":
                return b.fmul(x, y, flags=FAST)
            if e.op == "/":
                return b.fdiv(x, y, flags=FAST)
            if e.op in ("min", "max"):
                c = b.fcmp_ordered("<" if e.op == "min" else ">", x, y, flags=FAST)
                return b.select(c, x, y)
        else:
            if e.op == "+":
                return b.add(x, y)
            if e.op == "-":
                return b.sub(x, y)
            if e.op == "*":
                return b.mul(x, y)
            if e.op in ("min", "max"):
                return b.select(b.icmp_signed("<" if e.op == "min" else ">", x, y), x, y)
            if e.op in ("//", "/", "%"):
                bnd_a = arith.bounds(e.a, self.ranges)
                bnd_b = arith.bounds(e.b, self.ranges)
                if bnd_a and bnd_b and bnd_a[0] >= 0 and bnd_b[0] > 0:
                    return b.udiv(x, y) if e.op != "%" else b.urem(x, y)
                q, r = b.sdiv(x, y), b.srem(x, y)
                # floor semantics: adjust when the remainder and divisor differ in sign
                zero = (
                    ir.Constant(x.type, 0)
                    if not isinstance(x.type, ir.VectorType)
                    else ir.Constant(x.type, [I64(0)] * x.type.count)
                )
                adj = b.and_(
                    b.icmp_signed("!=", r, zero),
                    b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)),
                )
                if e.op == "%":
                    return b.select(adj, b.add(r, y), r)
                one = (
                    ir.Constant(x.type, 1)
                    if not isinstance(x.type, ir.VectorType)
                    else ir.Constant(x.type, [I64(1)] * x.type.count)
                )
                return b.select(adj, b.sub(q, one), q)
        raise CompileError(f"operator {e.op} is not supported for {e.dtype}")

    def select(self, e: Select) -> ir.Value:
        has_load = any(isinstance(x, BufferLoad) for side in (e.t, e.f) for x in walk_expr(side))
        cond = self.expr(e.cond)
        if has_load and not isinstance(cond.type, ir.VectorType):
            # Branch so a guarded out-of-bounds load is never executed.
            b = self.b
            with b.if_else(cond) as (then, orelse):
                with then:
                    tv = self._convert(self.expr(e.t), e.t.dtype, e.dtype)
                    tb = b.block
                with orelse:
                    fv = self._convert(self.expr(e.f), e.f.dtype, e.dtype)
                    fb = b.block
            tv, fv = self._pair(tv, fv)
            phi = b.phi(tv.type)
            phi.add_incoming(tv, tb)
            phi.add_incoming(fv, fb)
            return phi
        if has_load and isinstance(cond.type, ir.VectorType):
            outer = self.mask
            try:
                self.mask = cond if outer is None else self.b.and_(outer, cond)
                tv = self._convert(self.expr(e.t), e.t.dtype, e.dtype)
                inv = self.b.not_(cond)
                self.mask = inv if outer is None else self.b.and_(outer, inv)
                fv = self._convert(self.expr(e.f), e.f.dtype, e.dtype)
            finally:
                self.mask = outer
        else:
            tv = self._convert(self.expr(e.t), e.t.dtype, e.dtype)
            fv = self._convert(self.expr(e.f), e.f.dtype, e.dtype)
        tv, fv = self._pair(tv, fv)
        if isinstance(tv.type, ir.VectorType) and not isinstance(cond.type, ir.VectorType):
            cond = self._splat(cond, tv.type.count)
        elif isinstance(cond.type, ir.VectorType) and not isinstance(tv.type, ir.VectorType):
            tv, fv = self._splat(tv, cond.type.count), self._splat(fv, cond.type.count)
        return self.b.select(cond, tv, fv)

    def _exp(self, x: ir.Value) -> ir.Value:
        """exp of a float32 scalar or vector inline, so it vectorizes: LLVM lowers llvm.exp of a
        vector to one libm call per lane (a row softmax spent most of its time there)."""
        t = x.type
        scal = t.element if isinstance(t, ir.VectorType) else t
        if scal != ir.FloatType():
            return self.b.call(self._intrinsic("llvm.exp", t, [t], [t]), [x], fastmath=FAST)
        b = self.b

        def c(v: float) -> ir.Value:
            return ir.Constant(t, [ir.Constant(scal, v)] * t.count) if isinstance(t, ir.VectorType) \
                else ir.Constant(t, v)

        lo, hi = c(_EXP_LO), c(_EXP_HI)
        over = b.fcmp_ordered(">", x, hi)
        x = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        x = b.select(over, hi, x)
        n = b.call(self._intrinsic("llvm.floor", t, [t], [t]),
                   [b.fadd(b.fmul(x, c(_LOG2E), flags=FAST), c(0.5), flags=FAST)])
        r = b.fsub(x, b.fmul(n, c(_LN2_HI)))  # exact: the high part of ln 2 has few bits
        r = b.fsub(r, b.fmul(n, c(_LN2_LO), flags=FAST), flags=FAST)
        p = c(_EXP_P[0])
        for coef in _EXP_P[1:]:
            p = b.fadd(b.fmul(p, r, flags=FAST), c(coef), flags=FAST)
        p = b.fadd(b.fadd(b.fmul(b.fmul(p, r, flags=FAST), r, flags=FAST), r, flags=FAST), c(1.0), flags=FAST)
        p = b.fmul(p, c(2.0), flags=FAST)
        it = ir.VectorType(I32, t.count) if isinstance(t, ir.VectorType) else I32

        def ci(v: int) -> ir.Value:
            return ir.Constant(it, [I32(v)] * t.count) if isinstance(t, ir.VectorType) else I32(v)

        bits = b.shl(b.add(b.fptosi(n, it), ci(126)), ci(23))
        return b.select(over, c(float("inf")), b.fmul(p, b.bitcast(bits, t)))

    def call(self, e: Call) -> ir.Value:
        x = self.expr(e.args[0])
        t = x.type
        if e.func == "sigmoid":
            one = ir.Constant(t, 1.0) if not isinstance(t, ir.VectorType) else self._splat(t.element(1.0), t.count)
            ex = self._exp(self.b.fneg(x, flags=FAST))
            return self.b.fdiv(one, self.b.fadd(one, ex, flags=FAST), flags=FAST)
        if e.func == "exp":
            return self._exp(x)
        if e.func == "abs" and not is_float(e.dtype):
            return self.b.select(self.b.icmp_signed("<", x, ir.Constant(t, 0)), self.b.neg(x), x)
        name = {"sqrt": "llvm.sqrt", "log": "llvm.log", "abs": "llvm.fabs",
                "floor": "llvm.floor", "ceil": "llvm.ceil"}.get(e.func)
        if name is not None:
            return self.b.call(self._intrinsic(name, t, [t], [t]), [x], fastmath=FAST)
        if e.func == "tanh":
            scal = x.type.element if isinstance(t, ir.VectorType) else t
            fname = {ir.FloatType(): "tanhf", ir.DoubleType(): "tanh"}.get(scal)
            if fname is None:
                raise CompileError(f"tanh is not supported for {e.dtype}")
            fn = self.mod.globals.get(fname) or ir.Function(self.mod, ir.FunctionType(scal, [scal]), fname)
            if not isinstance(t, ir.VectorType):
                return self.b.call(fn, [x])
            out = ir.Constant(t, ir.Undefined)
            for n in range(t.count):
                out = self.b.insert_element(out, self.b.call(fn, [self.b.extract_element(x, I32(n))]), I32(n))
            return out
        raise CompileError(f"function {e.func} is not supported")


# exp(x) = 2^n * p(r) for float32: n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite),
# p a degree-7 polynomial (Cephes' expf coefficients); error about 1 ulp over the float range.
# The scale is built as 2^(n-1), times 2 in p: n may reach 128 (exp(88.72) ~ FLT_MAX); below -86.64 the
# result is clamped to exp(-86.64) ~ 2e-38 (an absolute error no float32 comparison sees).
_EXP_LO, _EXP_HI = -86.64, 88.7228
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _mangle(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_mangle(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.HalfType(): "f16", ir.FloatType(): "f32", ir.DoubleType(): "f64"}[t]


def _bytes(t: ir.Type) -> int:
    return t.width // 8 if isinstance(t, ir.IntType) else _fbytes(t)


def _fbytes(t: ir.Type) -> int:
    return {ir.HalfType(): 2, ir.FloatType(): 4, ir.DoubleType(): 8}.get(t, 4)


def _conj(parts: list[Expr]) -> Expr:
    return parts[0] if len(parts) == 1 else Logic("and", parts)
