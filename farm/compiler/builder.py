"""farm.build: schedule → loop nest → LLVM → Artifact (+ a callable module on the host)."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from farm.compiler.ir import PrimFunc, func_str
from farm.compiler.lowering import lower
from farm.errors import ArgumentError, CompileError
from farm.records.artifact import ArgSpec, Artifact
from farm.target import Target
from farm.te.graph import graph_flops
from farm.te.schedule import Schedule
from farm.te.tensor import PlaceholderOp, Tensor

log = logging.getLogger(__name__)


def count_flops(sch: Schedule) -> float:
    """Arithmetic of every compute stage of the schedule's graph, reductions and elementwise alike
    (a multiply-add counts 2, as TVM does; see farm.te.graph.op_flops)."""
    return graph_flops(sch.outputs)


class Module:
    """What farm.build returns: the artifact, and on the host a callable kernel."""

    def __init__(self, artifact: Artifact, func: PrimFunc, ir_text: str, build_s: float) -> None:
        self.artifact = artifact
        self.func = func
        self.ir = ir_text
        self.build_s = build_s
        self._kernel: Any = None

    def _loaded(self) -> Any:
        if self._kernel is None:
            tgt = Target.parse(self.artifact.target)
            if not tgt.runs_on_host():
                raise ArgumentError(f"target {tgt} does not run on this host; send the artifact to a device")
            from farm.runtime.loader import LoadedKernel

            self._kernel = LoadedKernel(self.artifact)
        return self._kernel

    def __call__(self, *arrays: Any) -> None:
        self._loaded()(*arrays)

    def time_evaluator(self, number: int = 1, repeat: int = 3, min_repeat_ms: float = 0.0,
                       cooldown_ms: float = 0.0) -> Any:
        """A function of the arrays returning per-call seconds per repeat (TVM semantics)."""
        k = self._loaded()

        def run(*arrays: Any) -> list[float]:
            return k.time_evaluator(arrays, number, repeat, min_repeat_ms, cooldown_ms)

        return run

    def set_num_threads(self, n: int) -> None:
        self._loaded().set_num_threads(n)

    def lowered(self) -> str:
        return func_str(self.func)


def arg_specs(sch: Schedule, args: Sequence[Tensor]) -> tuple[ArgSpec, ...]:
    """Argument specs: outputs of the schedule are "out", placeholders "in"."""
    outputs = {id(op.output) for op in sch.outputs}
    specs = []
    for t in args:
        role = "out" if id(t) in outputs else "in"
        if role == "in" and not isinstance(t.op, PlaceholderOp):
            raise CompileError(f"argument {t.name} is computed but not an output of the schedule")
        specs.append(ArgSpec(t.name, t.shape, t.dtype, role))
    return tuple(specs)


def build(sch: Schedule, args: Sequence[Tensor], target: str | Target = "llvm -mcpu=native",
          name: str = "kernel", workload: dict[str, Any] | None = None, flops: float | None = None) -> Module:
    """Compile a schedule for ``target``; returns a Module with ``.artifact``."""
    from farm.compiler.codegen import compile_object

    tgt = Target.parse(target)
    if tgt.kind != "llvm":
        from farm.compiler.codegen.nvptx import build_cuda  # type: ignore[import-not-found]

        return build_cuda(sch, args, tgt, name, workload, flops)
    t0 = time.perf_counter()
    func = lower(sch, args, name)
    specs = arg_specs(sch, args)
    code, ir_text = compile_object(func, tgt)
    art = Artifact(
        target=str(tgt), triple=tgt.triple, cpu=tgt.cpu, features=tgt.features, kind="object", code=code,
        args=specs, flops=float(flops if flops is not None else count_flops(sch)), workload=workload,
    )
    dt = time.perf_counter() - t0
    log.debug("built %s for %s in %.3fs (%d bytes)", name, tgt.triple, dt, len(code))
    return Module(art, func, ir_text, dt)
