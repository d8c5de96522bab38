"""NVPTX code generation: loop-nest IR → LLVM IR (nvptx64-nvidia-cuda) → PTX.

The expression and loop lowering is the CPU code generator's (subclassed, so
its unrolling, vector model and index arithmetic are shared); this file adds
what a GPU kernel needs:

- loops bound to ``blockIdx.*``/``threadIdx.*`` read the PTX special registers
  instead of looping; a bound loop shorter than the launch extent of its tag is
  guarded (``if tid < extent``), TVM's rule;
- ``shared`` buffers are ``addrspace(3)`` globals (one per buffer, static
  shared memory); they are accessed through generic pointers, which NVPTX's
  InferAddressSpaces pass turns back into ``ld/st.shared``;
- barriers (``bar.sync 0``) around the stages that fill shared buffers: before
  them inside a loop (the previous iteration's readers must be done) and after
  them (the readers must see the data). A barrier under a thread-dependent
  guard would deadlock or be undefined, so that is a compile error;
- the kernel uses the ``ptx_kernel`` calling convention and ``reqntid``
  (exact block size) so ptxas can budget registers for the real block.

The artifact's ``meta`` holds the launch: ``{"grid": [x,y,z], "block": [x,y,z],
"shared_bytes": n}``; ``shared_bytes`` is static shared memory already declared
in the PTX (the launch passes 0 dynamic bytes).
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from llvmlite import ir

from farm.compiler import arith
from farm.compiler.codegen import optimize, target_machine
from farm.compiler.codegen.gpu_lower import (
    MAX_STATIC_SHARED_BYTES,
    MAX_THREADS_PER_BLOCK,
    Launch,
    analyze_launch,
    barrier_plan,
    lower_gpu,
    writes_shared,
)
from farm.compiler.codegen.llvm_cpu import CpuCodegen
from farm.compiler.codegen.llvm_expr import FAST, ir_type
from farm.compiler.codegen.runtime import I32, I64
from farm.compiler.ir import Block, Buffer, For, IfThenElse, PrimFunc, Stmt
from farm.errors import CompileError
from farm.records.artifact import ENTRY_SYMBOL, Artifact
from farm.target import Target
from farm.te.expr import Const, substitute
from farm.te.tensor import Tensor

log = logging.getLogger(__name__)

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


class NvptxCodegen(CpuCodegen):
    """One PrimFunc → an LLVM module holding one ``ptx_kernel`` named ENTRY_SYMBOL."""

    def __init__(self, triple: str, data_layout: str, launch: Launch) -> None:
        super().__init__(triple, data_layout)
        self.launch = launch
        self.shared: dict[Buffer, ir.GlobalVariable] = {}
        self.loop_depth = 0  # enclosing non-bound loops: a shared refill there races the last iteration
        self.divergent = 0  # enclosing guards that may differ between threads of a block
        self.n_barriers = 0
        self._writes: dict[int, bool] = {}

    def generate(self, f: PrimFunc) -> ir.Module:  # type: ignore[override]
        fnty = ir.FunctionType(ir.VoidType(), [ir_type(b.dtype).as_pointer() for b in f.params])
        kern = ir.Function(self.mod, fnty, ENTRY_SYMBOL)
        kern.calling_convention = "ptx_kernel"
        for a, b in zip(kern.args, f.params):
            a.name = b.name
            a.add_attribute("noalias")  # lets NVPTX use the read-only (ld.global.nc) path
            a.attributes.align = 16  # cuMemAlloc returns 256-byte aligned memory
        ctx = self._new_ctx(kern)
        for a, b in zip(kern.args, f.params):
            ctx.bufs[b] = a
        self.ctx = ctx
        self.stmt(f.body)
        self.ctx.builder.ret_void()
        self._close_ctx(ctx)
        # nvvm.annotations are auto-upgraded to function attributes by LLVM >= 20.
        for axis, n in zip("xyz", self.launch.block):
            self.mod.add_named_metadata(
                "nvvm.annotations", [kern, ir.MetaDataString(self.mod, f"reqntid{axis}"), I32(n)]
            )
        return self.mod

    # --- statements ------------------------------------------------------------
    def stmt(self, s: Stmt) -> None:
        if not isinstance(s, Block) or not any(self._writes_shared(x) for x in s.stmts):
            super().stmt(s)
            return
        before, after = barrier_plan([self._writes_shared(x) for x in s.stmts], self.loop_depth > 0)
        for n, x in enumerate(s.stmts):
            if n in before:
                self._barrier("before refilling shared memory")
            super().stmt(x)
            if n in after:
                self._barrier("after filling shared memory")

    def _writes_shared(self, s: Stmt) -> bool:
        if id(s) not in self._writes:
            self._writes[id(s)] = writes_shared(s)
        return self._writes[id(s)]

    def _barrier(self, why: str) -> None:
        if self.divergent:
            raise CompileError(
                f"a barrier ({why}) would sit under a guard that may differ between threads; bind the stage that "
                "fills shared memory with the same thread extents as the block, outside any tail guard"
            )
        fn = self.mod.globals.get("llvm.nvvm.barrier0") or ir.Function(
            self.mod, ir.FunctionType(ir.VoidType(), []), "llvm.nvvm.barrier0")
        self.b.call(fn, [])
        self.n_barriers += 1

    def if_(self, s: IfThenElse) -> None:
        self.divergent += 1
        try:
            super().if_(s)
        finally:
            self.divergent -= 1

    def for_(self, s: For) -> None:
        if s.kind == "bind":
            self._bound_loop(s)
            return
        if s.kind == "parallel":
            log.debug("loop %s: parallel has no meaning inside a CUDA thread; serial", s.var.name)
            s = For(s.var, s.extent, "serial", s.body, s.tag)
        self.loop_depth += 1
        try:
            super().for_(s)
        finally:
            self.loop_depth -= 1

    def _bound_loop(self, s: For) -> None:
        self.ranges[s.var] = (0, s.extent - 1)
        idx = self._special_register(s.tag)
        self.ctx.env[s.var] = idx
        try:
            if s.extent < self.launch.extent(s.tag):
                self.divergent += 1
                try:
                    with self.b.if_then(self.b.icmp_unsigned("<", idx, I64(s.extent))):
                        self.stmt(s.body)
                finally:
                    self.divergent -= 1
            else:
                self.stmt(s.body)
        finally:
            del self.ctx.env[s.var]

    def _special_register(self, tag: str) -> ir.Value:
        kind, axis = tag.split(".")
        reg = {"threadIdx": "tid", "blockIdx": "ctaid"}[kind]
        name = f"llvm.nvvm.read.ptx.sreg.{reg}.{axis}"
        fn = self.mod.globals.get(name) or ir.Function(self.mod, ir.FunctionType(I32, []), name)
        # Indices compute in i64 in the shared expression lowering; the value is < 2^31.
        return self.b.zext(self.b.call(fn, []), I64)

    def allocate(self, s: Any) -> None:
        buf = s.buffer
        if buf.scope != "shared":
            super().allocate(s)
            return
        gv = self.shared.get(buf)
        if gv is None:
            name = "kf_shared_" + re.sub(r"[^A-Za-z0-9_]", "_", buf.name) + f"_{len(self.shared)}"
            gv = ir.GlobalVariable(self.mod, ir.ArrayType(ir_type(buf.dtype), buf.size), name, addrspace=3)
            gv.linkage = "internal"
            gv.initializer = ir.Constant(gv.value_type, ir.Undefined)
            gv.align = 16
            self.shared[buf] = gv
        self.ctx.bufs[buf] = self.b.addrspacecast(gv, ir_type(buf.dtype).as_pointer())
        self.stmt(s.body)

    # --- vector alignment ----------------------------------------------------------
    # The shared vector model marks vector accesses with the element's alignment;
    # NVPTX then splits them into scalar ld/st. Every GPU buffer here starts
    # 16-byte aligned (params, shared globals, allocas), so when the index of lane
    # 0 is provably a multiple of the vector, say so and get ld/st.v2/v4.
    def load(self, e: Any) -> ir.Value:
        v = super().load(e)
        if self.vec is not None and isinstance(v, ir.LoadInstr) and isinstance(v.type, ir.VectorType):
            v.align = max(v.align or 0, self._vector_align(e.buffer, e.indices, v.type))
        return v

    def store(self, s: Any) -> None:
        super().store(s)
        last = self.b.block.instructions[-1] if self.b.block.instructions else None
        if (
            self.vec is not None
            and isinstance(last, ir.StoreInstr)
            and isinstance(last.operands[0].type, ir.VectorType)
        ):
            last.align = max(last.align or 0, self._vector_align(s.buffer, s.indices, last.operands[0].type))

    def _vector_align(self, buf: Buffer, indices: Any, vt: ir.VectorType) -> int:
        assert self.vec is not None
        flat = self._flat(buf, indices)
        flat0 = arith.simplify(substitute(flat, {self.vec[0]: Const(0, "int32")}), self.ranges)
        terms, c0 = arith.linear(flat0, self.ranges)
        g = 0
        for c in list(terms.values()) + [c0]:
            g = math.gcd(g, abs(int(c)))
        elem = max(1, vt.element.width // 8) if isinstance(vt.element, ir.IntType) else {
            ir.HalfType(): 2, ir.FloatType(): 4, ir.DoubleType(): 8}.get(vt.element, 4)
        nbytes = g * elem
        align = 16 if nbytes == 0 else min(16, nbytes & -nbytes)
        return min(align, elem * vt.count)

    # --- math without libm -------------------------------------------------------
    def call(self, e: Any) -> ir.Value:
        # PTX has no libm: exp/log through the ex2/lg2 approximations (~2 ulp).
        if e.func not in ("exp", "log", "sigmoid", "tanh"):
            return super().call(e)
        if e.dtype != "float32":
            raise CompileError(f"{e.func} on {e.dtype} is not supported for CUDA targets (float32 only)")
        x = self.expr(e.args[0])
        b = self.b

        def const(v: float) -> ir.Value:
            return (
                ir.Constant(x.type, v)
                if not isinstance(x.type, ir.VectorType)
                else self._splat(ir.FloatType()(v), x.type.count)
            )

        def exp(v: ir.Value) -> ir.Value:
            return self._nvvm_unary("llvm.nvvm.ex2.approx.f", b.fmul(v, const(_LOG2E), flags=FAST))

        if e.func == "exp":
            return exp(x)
        if e.func == "log":
            return b.fmul(self._nvvm_unary("llvm.nvvm.lg2.approx.f", x), const(_LN2), flags=FAST)
        if e.func == "sigmoid":
            return b.fdiv(const(1.0), b.fadd(const(1.0), exp(b.fneg(x, flags=FAST)), flags=FAST), flags=FAST)
        two = b.fdiv(const(2.0), b.fadd(exp(b.fmul(x, const(2.0), flags=FAST)), const(1.0), flags=FAST), flags=FAST)
        return b.fsub(const(1.0), two, flags=FAST)  # tanh(x) = 1 - 2/(e^2x + 1): saturates cleanly

    def _nvvm_unary(self, name: str, x: ir.Value) -> ir.Value:
        f32 = ir.FloatType()
        fn = self.mod.globals.get(name) or ir.Function(self.mod, ir.FunctionType(f32, [f32]), name)
        if not isinstance(x.type, ir.VectorType):
            return self.b.call(fn, [x])
        out = ir.Constant(x.type, ir.Undefined)
        for n in range(x.type.count):
            out = self.b.insert_element(out, self.b.call(fn, [self.b.extract_element(x, I32(n))]), I32(n))
        return out


def compile_ptx(func: PrimFunc, launch: Launch, target: Target) -> tuple[str, str]:
    """PTX text and the optimized LLVM IR for a lowered GPU PrimFunc."""
    tm = target_machine(target.triple, target.cpu, target.features)
    cg = NvptxCodegen(target.triple, str(tm.target_data), launch)
    mod = optimize(str(cg.generate(func)), target)
    try:
        ptx = str(tm.emit_assembly(mod))
    except RuntimeError as e:
        raise CompileError(f"NVPTX code generation failed: {e}") from e
    return ptx, str(mod)


def build_cuda(sch: Any, args: Sequence[Tensor], tgt: Target, name: str = "kernel",
               workload: dict[str, Any] | None = None, flops: float | None = None) -> Any:
    """farm.build for CUDA targets: a Module whose artifact holds PTX and the launch dims."""
    from farm.compiler.builder import Module, count_flops

    if tgt.kind != "cuda":
        raise CompileError(f"build_cuda needs a cuda target, got {tgt}")
    t0 = time.perf_counter()
    from farm.compiler.builder import arg_specs  # local: farm.builder imports this module lazily

    specs = arg_specs(sch, args)
    func = lower_gpu(sch, args, name)
    launch = analyze_launch(
        func,
        max_threads=int(tgt.options.get("-max-threads-per-block", MAX_THREADS_PER_BLOCK)),
        max_shared=int(tgt.options.get("-max-shared-memory-per-block", MAX_STATIC_SHARED_BYTES)),
    )
    ptx, ir_text = compile_ptx(func, launch, tgt)
    art = Artifact(
        target=str(tgt), triple=tgt.triple, cpu=tgt.cpu, features=tgt.features, kind="ptx", code=ptx.encode(),
        args=specs, flops=float(flops if flops is not None else count_flops(sch)), entry=ENTRY_SYMBOL,
        workload=workload, meta=launch.to_json(),
    )
    dt = time.perf_counter() - t0
    log.debug("built %s for %s in %.3fs: grid %s block %s, %d B shared", name, tgt, dt, launch.grid,
              launch.block, launch.shared_bytes)
    return Module(art, func, ir_text, dt)
