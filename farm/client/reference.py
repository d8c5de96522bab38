"""The check a user kernel carries to a device: built here, once per task, never user code there.

* ``reference=`` given: its outputs on the job's seeded inputs, shipped as arrays.
* Otherwise the naive schedule of the same compute (``create_schedule``, nothing applied): built
  for a CPU device's own target, which runs it on the same inputs; for a GPU device its outputs,
  computed on this machine's CPU.

Built-in workloads carry nothing: devices know their numpy references by name.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.errors import UserKernelError
from farm.records.artifact import Artifact, outputs_artifact
from farm.records.measure import RunOptions
from farm.runtime.buffers import seeded_inputs
from farm.target import Target
from farm.te.tensor import ComputeOp, Tensor


def _outputs(artifact: Artifact, outs: Sequence[Any], what: str, seed: int) -> Artifact:
    import numpy as np

    specs = [s for s in artifact.args if s.role == "out"]
    arrays = [np.asarray(o) for o in outs]
    if len(arrays) != len(specs):
        raise UserKernelError(f"{what} returned {len(arrays)} output(s), the kernel has {len(specs)}")
    for a, s in zip(arrays, specs):
        if tuple(a.shape) != tuple(s.shape):
            raise UserKernelError(f"{what}: output {s.name} has shape {tuple(a.shape)}, the kernel's is {s.shape}")
    return outputs_artifact(arrays, [s.name for s in specs], seed)


def workload_reference(wl: Any, args: Sequence[int], artifact: Artifact, target: str | Target,
                       options: RunOptions) -> Artifact | None:
    """The reference artifact for candidates of a registered workload (None for built-ins)."""
    from farm.workloads.registry import build_naive, naive_outputs

    if wl.builtin or not options.check:
        return None
    tgt = Target.parse(target)
    inputs = [a for a, s in zip(seeded_inputs(artifact.args, options.seed), artifact.args) if s.role == "in"]
    if wl.numpy_reference is not None:
        try:
            outs = wl.reference(args, inputs)
        except UserKernelError:
            raise
        except Exception as e:
            raise UserKernelError(f"{wl.label}: its reference= raised {type(e).__name__}: {e}") from e
        return _outputs(artifact, outs, f"{wl.label}: reference=", options.seed)
    if tgt.kind == "llvm":
        return build_naive(wl, args, tgt).artifact
    return _outputs(artifact, naive_outputs(wl, args, inputs), f"{wl.label}: naive schedule", options.seed)


def schedule_reference(args: Sequence[Tensor], artifact: Artifact, target: str | Target,
                       options: RunOptions) -> Artifact | None:
    """The naive reference for any te kernel (``farm.connect(...).measure(s, [A, B, C])``)."""
    from farm.compiler.builder import build
    from farm.te.schedule import create_schedule

    if not options.check:
        return None
    tgt = Target.parse(target)
    naive = create_schedule([t.op for t in args if isinstance(t.op, ComputeOp)])
    if tgt.kind == "llvm":
        return build(naive, list(args), tgt, name="naive", flops=0.0).artifact
    mod = build(naive, list(args), "llvm", name="naive", flops=0.0)
    arrays = seeded_inputs(artifact.args, options.seed)  # outputs zeroed
    mod(*arrays)
    return _outputs(artifact, [a for a, s in zip(arrays, artifact.args) if s.role == "out"], "naive schedule",
                    options.seed)
