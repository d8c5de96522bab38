"""Code generation: loop-nest IR → LLVM IR → relocatable object (CPU) or PTX."""
from __future__ import annotations

import functools
import logging
from typing import Any

from farm.compiler.ir import PrimFunc
from farm.errors import CompileError
from farm.target import Target, _llvm

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def target_machine(triple: str, cpu: str, features: str, opt: int = 3) -> Any:
    llvm = _llvm()
    try:
        tgt = llvm.Target.from_triple(triple)
    except RuntimeError as e:
        raise CompileError(f"LLVM does not know triple {triple!r}: {e}") from e
    return tgt.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic", codemodel="default")


def llvm_module(func: PrimFunc, target: Target) -> str:
    """Unoptimized LLVM IR text for ``func``."""
    from farm.compiler.codegen.llvm_cpu import CpuCodegen

    tm = target_machine(target.triple, target.cpu, target.features)
    cg = CpuCodegen(target.triple, str(tm.target_data), target.vector_lanes_f32)
    return str(cg.generate(func))


def optimize(ir_text: str, target: Target) -> Any:
    llvm = _llvm()
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"generated LLVM IR is invalid: {e}") from e
    tm = target_machine(target.triple, target.cpu, target.features)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def compile_object(func: PrimFunc, target: Target) -> tuple[bytes, str]:
    """Relocatable object bytes and the optimized IR text."""
    mod = optimize(llvm_module(func, target), target)
    tm = target_machine(target.triple, target.cpu, target.features)
    return bytes(tm.emit_object(mod)), str(mod)


def assembly(func: PrimFunc, target: Target) -> str:
    mod = optimize(llvm_module(func, target), target)
    return str(target_machine(target.triple, target.cpu, target.features).emit_assembly(mod))
