"""GPU-aware lowering and launch analysis for the NVPTX code generator.

Lowering for GPUs differs from the CPU lowering in one rule (TVM's, for
shared memory): a stage in ``shared`` scope is computed once per thread
*block*, so when its region is inferred the loops bound to ``threadIdx.*``
are relaxed to their full range. Without that a shared tile attached inside
the per-thread loop nest would be sized for one thread's slice and every
thread would write its own slice to the same place.

A loop bound to a thread tag inside another loop bound to the same tag (a
cooperative load inside the per-thread nest) means the same hardware index,
as in TVM: both loop variables read ``threadIdx.x``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from farm.compiler.ir import Allocate, For, PrimFunc, Stmt, Store, walk_stmts
from farm.compiler.lowering import _Lowerer
from farm.errors import CompileError
from farm.te.expr import IterVar
from farm.te.schedule import Schedule
from farm.te.tensor import Tensor

# Hardware limits common to sm_70..sm_90; a target may lower them with options.
MAX_THREADS_PER_BLOCK = 1024
MAX_STATIC_SHARED_BYTES = 48 * 1024  # PTX static .shared is capped at 48 KiB
MAX_GRID = {"x": (1 << 31) - 1, "y": 65535, "z": 65535}
MAX_BLOCK = {"x": 1024, "y": 1024, "z": 64}


class GpuLowerer(_Lowerer):
    """The loop-nest lowering with threadIdx relaxation for shared-scope stages."""

    def run(self) -> PrimFunc:
        self._thread_vars: set[IterVar] = {
            iv for st in self.sch.stages for iv, tag in st.bindings.items() if tag.startswith("threadIdx")
        }
        return super().run()

    def _infer_region(self, child: Any, parent: Any, body: Any, free: set[IterVar]) -> Any:
        if child.scope == "shared":
            free = set(free) | self._thread_vars
        return super()._infer_region(child, parent, body, free)


def lower_gpu(sch: Schedule, args: Sequence[Tensor], name: str = "kernel") -> PrimFunc:
    return GpuLowerer(sch, args, name).run()


@dataclass(frozen=True)
class Launch:
    """Launch dimensions of a single-kernel PrimFunc and its static shared memory."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    def extent(self, tag: str) -> int:
        kind, axis = tag.split(".")
        dims = self.grid if kind == "blockIdx" else self.block
        return dims["xyz".index(axis)]

    def to_json(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "block": list(self.block), "shared_bytes": self.shared_bytes}


def _dtype_bytes(dtype: str) -> int:
    return {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
            "int32": 4, "int64": 8, "bool": 1}[dtype]


def analyze_launch(func: PrimFunc, max_threads: int = MAX_THREADS_PER_BLOCK,
                   max_shared: int = MAX_STATIC_SHARED_BYTES) -> Launch:
    """Grid and block from the bound loops (the largest extent per tag, as in TVM:
    a smaller loop bound to the same tag is guarded), and the shared bytes."""
    if func.globals:
        names = ", ".join(g.name for g in func.globals)
        raise CompileError(
            f"CUDA kernels are a single launch: intermediate stage(s) {names} computed at root would need a "
            "grid-wide barrier; inline them or compute_at them inside the kernel's loops"
        )
    ext: dict[str, int] = {}
    shared = 0
    seen: set[int] = set()
    for s in walk_stmts(func.body):
        if isinstance(s, For) and s.kind == "bind":
            ext[s.tag] = max(ext.get(s.tag, 1), s.extent)
        elif isinstance(s, Allocate) and s.buffer.scope == "shared" and id(s.buffer) not in seen:
            seen.add(id(s.buffer))
            shared += -(-s.buffer.size * _dtype_bytes(s.buffer.dtype) // 16) * 16
    grid = tuple(ext.get(f"blockIdx.{a}", 1) for a in "xyz")
    block = tuple(ext.get(f"threadIdx.{a}", 1) for a in "xyz")
    for a, g, b in zip("xyz", grid, block):
        if g > MAX_GRID[a]:
            raise CompileError(f"grid dimension {a} is {g}, the hardware allows {MAX_GRID[a]}")
        if b > MAX_BLOCK[a]:
            raise CompileError(f"block dimension {a} is {b}, the hardware allows {MAX_BLOCK[a]}")
    launch = Launch(grid, block, shared)  # type: ignore[arg-type]
    if launch.threads > max_threads:
        raise CompileError(f"block of {launch.threads} threads {block} exceeds {max_threads} threads per block")
    if shared > max_shared:
        raise CompileError(f"kernel needs {shared} bytes of shared memory, the limit is {max_shared}")
    return launch


def writes_shared(s: Stmt) -> bool:
    return any(isinstance(x, Store) and x.buffer.scope == "shared" for x in walk_stmts(s))


def barrier_plan(flags: Sequence[bool], in_loop: bool) -> tuple[set[int], set[int]]:
    """Where a block's statements need ``bar.sync``: (before, after) statement indices.

    ``flags[n]`` says statement n fills shared memory. Before a run of fills
    inside a loop, the previous iteration's readers must be done (write after
    read); after the run, the readers must see the data (read after write).
    The code generator and the simulator (gpu_sim) both follow this plan.
    """
    before, after = set(), set()
    for n, f in enumerate(flags):
        if f and (n == 0 or not flags[n - 1]) and in_loop:
            before.add(n)
        if f and n + 1 < len(flags) and not flags[n + 1]:
            after.add(n)
    return before, after
