"""Schedules: stages and the primitives that transform their loop nests.

A Stage owns a copy of its op's body, so scheduling (cache_write, cache_read,
inline) never mutates the user's tensor graph: two schedules of the same
compute are independent.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from farm.errors import ScheduleError
from farm.te.expr import Expr, IterVar, Load, Reduce, substitute, transform, walk
from farm.te.tensor import ComputeOp, Operation, PlaceholderOp, Tensor

ANNOTATIONS = ("vectorize", "unroll", "parallel")
THREAD_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")
SCOPES = ("global", "local", "shared")


@dataclass(frozen=True)
class Split:
    parent: IterVar
    outer: IterVar
    inner: IterVar
    factor: int  # inner extent


@dataclass(frozen=True)
class Fuse:
    outer: IterVar
    inner: IterVar
    fused: IterVar


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


class Stage:
    """The schedule of one compute operation."""

    def __init__(self, op: ComputeOp, schedule: Schedule) -> None:
        self.op = op
        self.schedule = schedule
        self.tensor: Tensor = op.output
        self.axis: list[IterVar] = list(op.axis)
        self.reduce_axis: list[IterVar] = list(op.reduce_axis)
        self.body: Expr = op.body
        self.scope = "global"
        self.leaf: list[IterVar] = self.axis + self.reduce_axis
        self.relations: list[Split | Fuse] = []
        self.annotations: dict[IterVar, str] = {}
        self.bindings: dict[IterVar, str] = {}
        self.attach: str = "root"  # "root" | "inline" | "at"
        self.attach_stage: Stage | None = None
        self.attach_ivar: IterVar | None = None
        self.pragmas: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"stage({self.op.name})"

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def all_ivars(self) -> list[IterVar]:
        out = list(self.axis + self.reduce_axis)
        for r in self.relations:
            out += [r.outer, r.inner] if isinstance(r, Split) else [r.fused]
        return out

    def _leaf_index(self, iv: IterVar, prim: str) -> int:
        if not isinstance(iv, IterVar):
            raise ScheduleError(f"{prim} on stage {self.name}: expected an axis, got {type(iv).__name__} {iv!r}")
        for n, x in enumerate(self.leaf):
            if x is iv:
                return n
        if any(x is iv for x in self.all_ivars):
            raise ScheduleError(
                f"{prim} on stage {self.name}: axis {iv.name} was already split or fused; use the axes it produced"
            )
        raise ScheduleError(f"{prim} on stage {self.name}: axis {iv.name} does not belong to this stage")

    # --- loop-structure primitives ------------------------------------------
    def split(self, parent: IterVar, factor: int | None = None, nparts: int | None = None) -> tuple[IterVar, IterVar]:
        """Split ``parent`` into (outer, inner); non-divisible extents stay correct (guarded)."""
        n = self._leaf_index(parent, "split")
        if (factor is None) == (nparts is None):
            raise ScheduleError(f"split of {parent.name} on {self.name}: give exactly one of factor= and nparts=")
        k = factor if factor is not None else nparts
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ScheduleError(
                f"split of {parent.name} on {self.name}: factor/nparts must be a positive int, got {k!r}"
            )
        ext = parent.extent
        inner_ext = min(k, ext) if factor is not None else _ceildiv(ext, min(k, ext))
        outer = IterVar(f"{parent.name}.outer", _ceildiv(ext, inner_ext), parent.kind)
        inner = IterVar(f"{parent.name}.inner", inner_ext, parent.kind)
        self.relations.append(Split(parent, outer, inner, inner_ext))
        self.leaf[n : n + 1] = [outer, inner]
        self._move_annotations(parent, inner)
        return outer, inner

    def tile(self, x: IterVar, y: IterVar, x_factor: int, y_factor: int) -> tuple[IterVar, IterVar, IterVar, IterVar]:
        xo, xi = self.split(x, factor=x_factor)
        yo, yi = self.split(y, factor=y_factor)
        self.reorder(xo, yo, xi, yi)
        return xo, yo, xi, yi

    def fuse(self, *ivars: IterVar) -> IterVar:
        """Fuse adjacent axes (outermost first) into one."""
        if len(ivars) < 2:
            if len(ivars) == 1:
                self._leaf_index(ivars[0], "fuse")
                return ivars[0]
            raise ScheduleError(f"fuse on {self.name}: needs at least one axis")
        acc = ivars[0]
        for nxt in ivars[1:]:
            i = self._leaf_index(acc, "fuse")
            j = self._leaf_index(nxt, "fuse")
            if j != i + 1:
                raise ScheduleError(f"fuse on {self.name}: {acc.name} and {nxt.name} are not adjacent (outer first)")
            if acc.kind != nxt.kind:
                raise ScheduleError(f"fuse on {self.name}: cannot fuse a reduction axis with a data axis")
            fused = IterVar(f"{acc.name}.{nxt.name}.fused", acc.extent * nxt.extent, acc.kind)
            self.relations.append(Fuse(acc, nxt, fused))
            self.leaf[i : i + 2] = [fused]
            acc = fused
        return acc

    def reorder(self, *ivars: IterVar) -> None:
        """Put the given axes in this order, in the positions they occupy now."""
        idx = [self._leaf_index(iv, "reorder") for iv in ivars]
        if len(set(idx)) != len(idx):
            raise ScheduleError(f"reorder on {self.name}: an axis is named twice")
        for pos, iv in zip(sorted(idx), ivars):
            self.leaf[pos] = iv

    # --- annotations ---------------------------------------------------------
    def _annotate(self, iv: IterVar, what: str) -> None:
        self._leaf_index(iv, what)
        if what == "vectorize" and iv.kind == "reduce":
            raise ScheduleError(f"vectorize on {self.name}: {iv.name} is a reduction axis")
        if what == "parallel" and iv.kind == "reduce":
            raise ScheduleError(f"parallel on {self.name}: {iv.name} is a reduction axis (races)")
        self.annotations[iv] = what

    def vectorize(self, iv: IterVar) -> None:
        self._annotate(iv, "vectorize")

    def unroll(self, iv: IterVar) -> None:
        self._annotate(iv, "unroll")

    def parallel(self, iv: IterVar) -> None:
        self._annotate(iv, "parallel")

    def bind(self, iv: IterVar, thread_tag: str) -> None:
        """Bind an axis to a GPU block/thread index (CUDA targets)."""
        self._leaf_index(iv, "bind")
        tag = getattr(thread_tag, "tag", thread_tag)
        if tag not in THREAD_TAGS:
            raise ScheduleError(f"bind on {self.name}: unknown thread tag {tag!r}; one of {', '.join(THREAD_TAGS)}")
        self.bindings[iv] = str(tag)

    def pragma(self, key: str, value: object) -> None:
        self.pragmas[key] = value

    def _move_annotations(self, old: IterVar, new: IterVar) -> None:
        # An annotation on a split axis follows its inner part (TVM does the same for vectorize).
        if old in self.annotations:
            self.annotations[new] = self.annotations.pop(old)

    # --- attachment ----------------------------------------------------------
    def compute_at(self, parent: Stage, ivar: IterVar) -> None:
        """Compute this stage inside ``parent``'s loop ``ivar``, over the region it needs there."""
        if not isinstance(parent, Stage):
            parent = self.schedule[parent]
        parent._leaf_index(ivar, "compute_at")
        if parent is self:
            raise ScheduleError(f"compute_at: stage {self.name} cannot attach to itself")
        self.attach, self.attach_stage, self.attach_ivar = "at", parent, ivar

    def compute_inline(self) -> None:
        """Substitute this elementwise stage's body into its consumers."""
        if isinstance(self.body, Reduce):
            raise ScheduleError(f"compute_inline: stage {self.name} is a reduction and cannot be inlined")
        if self.op in self.schedule.outputs:
            raise ScheduleError(f"compute_inline: stage {self.name} is an output of the schedule")
        self.attach, self.attach_stage, self.attach_ivar = "inline", None, None

    def compute_root(self) -> None:
        self.attach, self.attach_stage, self.attach_ivar = "root", None, None

    def set_scope(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ScheduleError(f"set_scope on {self.name}: unknown scope {scope!r}")
        self.scope = scope


class Schedule:
    """The stages of a computation, producers first."""

    def __init__(self, outputs: Sequence[Operation]) -> None:
        self.outputs = list(outputs)
        self.stages: list[Stage] = []
        self._by_op: dict[int, Stage] = {}
        seen: set[int] = set()

        def visit(op: Operation) -> None:
            if id(op) in seen:
                return
            seen.add(id(op))
            for t in op.input_tensors:
                visit(t.op)
            if isinstance(op, ComputeOp):
                st = Stage(op, self)
                self.stages.append(st)
                self._by_op[id(op)] = st

        for op in self.outputs:
            if not isinstance(op, ComputeOp):
                raise ScheduleError(f"create_schedule: {getattr(op, 'name', op)!r} is not a compute operation")
            visit(op)

    def __getitem__(self, key: Tensor | Operation | Stage) -> Stage:
        if isinstance(key, Stage):
            return key
        op = key.op if isinstance(key, Tensor) else key
        st = self._by_op.get(id(op))
        if st is None:
            if isinstance(op, PlaceholderOp):
                raise ScheduleError(f"{op.name} is a placeholder: it has no stage to schedule")
            raise ScheduleError(f"{getattr(op, 'name', op)!r} is not part of this schedule")
        return st

    def _insert_before(self, new: Stage, anchor: Stage) -> None:
        self.stages.insert(self.stages.index(anchor), new)
        self._by_op[id(new.op)] = new

    def cache_write(self, tensor: Tensor, scope: str) -> Tensor:
        """Compute ``tensor`` into a cache stage of ``scope``; the original stage copies it out.

        The usual use: accumulate a tile of C in registers ("local"), then
        ``compute_at`` the cache inside C's tile loop.
        """
        st = self[tensor]
        if scope not in SCOPES:
            raise ScheduleError(f"cache_write of {tensor.name}: unknown scope {scope!r}")
        if st.relations or st.leaf != st.axis + st.reduce_axis:
            raise ScheduleError(f"cache_write of {tensor.name}: call it before splitting or reordering the stage")
        mapping = {a: IterVar(a.name + ".c", a.extent, a.kind) for a in st.axis + st.reduce_axis}
        body = substitute(st.body, mapping)  # type: ignore[arg-type]
        if isinstance(body, Reduce):
            body = Reduce(body.combiner, body.source, [mapping[a] for a in st.reduce_axis], body.where)
        cache_op = ComputeOp(f"{tensor.name}.{scope}", [mapping[a] for a in st.axis], body, tensor.dtype)
        cache = Stage(cache_op, self)
        cache.scope = scope
        self._insert_before(cache, st)
        st.body = Load(cache_op.output, list(st.axis))
        st.reduce_axis = []
        st.leaf = list(st.axis)
        return cache_op.output

    def cache_read(self, tensor: Tensor, scope: str, readers: Sequence[Tensor | Stage]) -> Tensor:
        """Copy ``tensor`` into a stage of ``scope`` that ``readers`` read instead."""
        if scope not in SCOPES:
            raise ScheduleError(f"cache_read of {tensor.name}: unknown scope {scope!r}")
        axis = [IterVar(f"ax{n}", d) for n, d in enumerate(tensor.shape)]
        op = ComputeOp(f"{tensor.name}.{scope}", axis, Load(tensor, list(axis)), tensor.dtype)
        st = Stage(op, self)
        st.scope = scope
        reader_stages = [self[r] for r in readers]
        if not reader_stages:
            raise ScheduleError(f"cache_read of {tensor.name}: name at least one reader")
        for r in reader_stages:
            if not any(isinstance(e, Load) and e.tensor is tensor for e in walk(r.body)):
                raise ScheduleError(f"cache_read of {tensor.name}: stage {r.name} does not read it")
            r.body = transform(
                r.body, lambda e: Load(op.output, e.indices) if isinstance(e, Load) and e.tensor is tensor else None
            )
        first = min(self.stages.index(r) for r in reader_stages)
        self._insert_before(st, self.stages[first])
        return op.output


def create_schedule(ops: Operation | Sequence[Operation]) -> Schedule:
    """A default schedule (naive loop nests) for the given output operation(s)."""
    if isinstance(ops, Operation):
        ops = [ops]
    elif isinstance(ops, Tensor):
        ops = [ops.op]
    return Schedule([o.op if isinstance(o, Tensor) else o for o in ops])


