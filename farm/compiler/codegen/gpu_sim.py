"""A slow, strict simulator of the CUDA execution model for lowered GPU PrimFuncs.

Machines without a GPU still need to know that a CUDA schedule is *correct*:
that shared tiles are sized for the block, that guards cover the tails, and
that the barriers the code generator inserts (``gpu_lower.barrier_plan``, the
same plan) separate every shared write from the other threads' reads. This
translates a PrimFunc into a Python generator per thread (``yield`` = barrier)
and runs each block's threads in lockstep between barriers, checking:

- every global/shared/local access is inside its buffer (a GPU would read junk);
- shared and local memory start as NaN, so reading an element nobody wrote
  poisons the output instead of passing by luck;
- no thread reads a shared element another thread wrote in the same barrier
  interval, or writes one another thread read or wrote there (a data race);
- every thread of a block reaches the same number of barriers.

It does not check the LLVM/PTX layers (ptxas and a real GPU do that). Small
problems only: it runs at roughly a million scalar operations per few seconds.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from farm.compiler.codegen.gpu_lower import Launch, barrier_plan, writes_shared
from farm.compiler.ir import Allocate, Block, Buffer, BufferLoad, For, IfThenElse, PrimFunc, Stmt, Store
from farm.errors import CompileError
from farm.te.expr import BinOp, Call, Cast, Cmp, Const, Expr, Logic, Select, Var, is_float


class SimulationError(AssertionError):
    """The kernel would misbehave on a GPU (race, out-of-bounds access, barrier mismatch)."""


class _Block:
    """Per-block state: shared arrays and the race bookkeeping of the current interval."""

    def __init__(self) -> None:
        self.shared: dict[int, list[float]] = {}
        self.writer: dict[tuple[int, int], int] = {}
        self.readers: dict[tuple[int, int], set[int]] = {}

    def barrier(self) -> None:
        self.writer.clear()
        self.readers.clear()

    def load(self, key: int, name: str, arr: list[float], i: int, tid: int) -> float:
        if not 0 <= i < len(arr):
            raise SimulationError(f"thread {tid} reads shared {name}[{i}], outside its {len(arr)} elements")
        w = self.writer.get((key, i))
        if w is not None and w != tid:
            raise SimulationError(
                f"race: thread {tid} reads shared {name}[{i}] written by thread {w} with no barrier between"
            )
        self.readers.setdefault((key, i), set()).add(tid)
        return arr[i]

    def store(self, key: int, name: str, arr: list[float], i: int, v: float, tid: int) -> None:
        if not 0 <= i < len(arr):
            raise SimulationError(f"thread {tid} writes shared {name}[{i}], outside its {len(arr)} elements")
        w = self.writer.get((key, i))
        others = self.readers.get((key, i), set()) - {tid}
        if (w is not None and w != tid) or others:
            who = w if w is not None and w != tid else min(others)
            raise SimulationError(
                f"race: thread {tid} writes shared {name}[{i}] also used by thread {who} with no barrier between"
            )
        self.writer[(key, i)] = tid
        arr[i] = v


def _check(name: str, n: int, i: int) -> int:
    if not 0 <= i < n:
        raise SimulationError(f"access {name}[{i}] outside its {n} elements")
    return i


class _Translator:
    """PrimFunc → Python source of ``def thread(G, blk, tid, ctaid, tlin)``, a generator."""

    def __init__(self, func: PrimFunc, launch: Launch) -> None:
        self.func, self.launch = func, launch
        self.lines: list[str] = []
        self.names: dict[int, str] = {}
        self.buf_keys: dict[int, int] = {}

    def name(self, v: Var) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = f"v{len(self.names)}"
        return self.names[id(v)]

    def key(self, b: Buffer) -> int:
        return self.buf_keys.setdefault(id(b), len(self.buf_keys))

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def flat(self, b: Buffer, idx: Sequence[Expr]) -> str:
        if len(idx) != len(b.shape):
            raise CompileError(f"buffer {b.name} indexed with {len(idx)} indices, has {len(b.shape)} dims")
        terms = [f"({self.expr(i)})*{st}" for i, st in zip(idx, b.strides)]
        return "+".join(terms) or "0"

    def access(self, b: Buffer) -> str:
        return f"B{self.key(b)}"

    def expr(self, e: Expr) -> str:
        if isinstance(e, Const):
            return repr(float(e.value)) if is_float(e.dtype) else repr(int(e.value))
        if isinstance(e, Var):
            return self.name(e)
        if isinstance(e, BufferLoad):
            b, k, i = e.buffer, self.key(e.buffer), self.flat(e.buffer, e.indices)
            if b.scope == "shared":
                return f"blk.load({k}, {b.name!r}, B{k}, {i}, tlin)"
            return f"B{k}[_check({b.name!r}, len(B{k}), {i})]"
        if isinstance(e, BinOp):
            a, c = self.expr(e.a), self.expr(e.b)
            if e.op in ("min", "max"):
                return f"{e.op}({a}, {c})"
            op = e.op
            if op == "/" and not is_float(e.dtype):
                op = "//"
            return f"({a} {op} {c})"
        if isinstance(e, Cmp):
            return f"({self.expr(e.a)} {e.op} {self.expr(e.b)})"
        if isinstance(e, Logic):
            if e.op == "not":
                return f"(not {self.expr(e.args[0])})"
            return "(" + f" {e.op} ".join(self.expr(a) for a in e.args) + ")"
        if isinstance(e, Select):
            return f"({self.expr(e.t)} if {self.expr(e.cond)} else {self.expr(e.f)})"
        if isinstance(e, Cast):
            return f"{'float' if is_float(e.dtype) else 'int'}({self.expr(e.x)})"
        if isinstance(e, Call):
            fn = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "abs": "abs", "floor": "math.floor",
                  "ceil": "math.ceil", "tanh": "math.tanh", "sigmoid": "_sigmoid"}[e.func]
            return f"{fn}({', '.join(self.expr(a) for a in e.args)})"
        raise CompileError(f"simulator: cannot evaluate {type(e).__name__}")

    def stmt(self, s: Stmt, d: int, in_loop: bool) -> None:
        if isinstance(s, Block):
            flags = [writes_shared(x) for x in s.stmts]
            before, after = barrier_plan(flags, in_loop) if any(flags) else (set(), set())
            for n, x in enumerate(s.stmts):
                if n in before:
                    self.emit(d, "yield")
                self.stmt(x, d, in_loop)
                if n in after:
                    self.emit(d, "yield")
        elif isinstance(s, For):
            v = self.name(s.var)
            if s.kind == "bind":
                kind, axis = s.tag.split(".")
                src = "tid" if kind == "threadIdx" else "ctaid"
                self.emit(d, f"{v} = {src}[{'xyz'.index(axis)}]")
                if s.extent < self.launch.extent(s.tag):
                    self.emit(d, f"if {v} < {s.extent}:")
                    self.stmt(s.body, d + 1, in_loop)
                else:
                    self.stmt(s.body, d, in_loop)
            else:
                self.emit(d, f"for {v} in range({s.extent}):")
                self.stmt(s.body, d + 1, True)
                self.emit(d + 1, "pass")
        elif isinstance(s, Store):
            b, k, i, val = s.buffer, self.key(s.buffer), self.flat(s.buffer, s.indices), self.expr(s.value)
            if b.scope == "shared":
                self.emit(d, f"blk.store({k}, {b.name!r}, B{k}, {i}, {val}, tlin)")
            else:
                self.emit(d, f"B{k}[_check({b.name!r}, len(B{k}), {i})] = {val}")
        elif isinstance(s, IfThenElse):
            self.emit(d, f"if {self.expr(s.cond)}:")
            self.stmt(s.then, d + 1, in_loop)
            self.emit(d + 1, "pass")
            if s.orelse is not None:
                self.emit(d, "else:")
                self.stmt(s.orelse, d + 1, in_loop)
                self.emit(d + 1, "pass")
        elif isinstance(s, Allocate):
            b, k = s.buffer, self.key(s.buffer)
            if b.scope == "shared":
                self.emit(d, f"B{k} = blk.shared.setdefault({k}, [_NAN] * {b.size})")
            else:
                self.emit(d, f"B{k} = [_NAN] * {b.size}")
            self.stmt(s.body, d, in_loop)
        else:
            raise CompileError(f"simulator: cannot run {type(s).__name__}")

    def compile(self) -> Callable[..., Any]:
        self.emit(0, "def thread(G, blk, tid, ctaid, tlin):")
        for n, b in enumerate(self.func.params):
            self.emit(1, f"B{self.key(b)} = G[{n}]")
        self.emit(1, "if False:")
        self.emit(2, "yield")
        self.stmt(self.func.body, 1, False)
        env: dict[str, Any] = {"math": math, "_check": _check, "_NAN": float("nan"),
                               "_sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x))}
        # The kernel is our own translation of a PrimFunc, never external text.
        exec(compile("\n".join(self.lines), f"<gpu_sim {self.func.name}>", "exec"), env)  # noqa: S102
        return env["thread"]  # type: ignore[no-any-return]


def simulate(func: PrimFunc, launch: Launch, arrays: Sequence[np.ndarray]) -> None:
    """Run the kernel on ``arrays`` (numpy, in parameter order; outputs are written)."""
    thread = _Translator(func, launch).compile()
    flat = [np.asarray(a).reshape(-1) for a in arrays]
    gx, gy, gz = launch.grid
    bx, by, bz = launch.block
    tids = [(x, y, z) for z in range(bz) for y in range(by) for x in range(bx)]
    for cz in range(gz):
        for cy in range(gy):
            for cx in range(gx):
                blk = _Block()
                gens = [thread(flat, blk, t, (cx, cy, cz), n) for n, t in enumerate(tids)]
                while gens:
                    alive = []
                    for g in gens:
                        try:
                            next(g)
                            alive.append(g)
                        except StopIteration:
                            pass
                    if alive and len(alive) != len(gens):
                        raise SimulationError(
                            f"block {(cx, cy, cz)}: {len(alive)} of {len(gens)} threads wait at a barrier "
                            "the others never reach"
                        )
                    blk.barrier()
                    gens = alive
