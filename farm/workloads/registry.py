"""Workload registry: what can be tuned, built-in and user kernels alike, through one decorator.

A workload is named ("matmul") and instantiated with integer arguments (its shape, e.g. M,N,K).
Its template defines the config space; the same template instantiated with one config gives the
schedule to build. ``@template`` registers a template written AutoTVM-style (``cfg.define_split``
...); ``@compute`` registers a bare compute definition whose space the farm generates
(``farm.workloads.auto``). Built-in workloads are registered with the same decorator.

A user kernel is identified in records by name, shape and the hash of its compute graph
(``farm.te.graph.compute_hash``), so two kernels with one name never share records. Its outputs
are checked on every device against a reference that needs no user code there: the naive
schedule of the same compute, or the outputs of its numpy ``reference=``, computed by the client.
"""
from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.errors import ConfigError, FarmError, UserKernelError
from farm.target import Target
from farm.te.graph import compute_hash, graph_flops
from farm.te.schedule import Schedule, create_schedule
from farm.te.tensor import ComputeOp, PlaceholderOp, Tensor
from farm.workloads.references import reference_for
from farm.workloads.space import ConfigEntity, ConfigSpace

log = logging.getLogger(__name__)

Template = Callable[[Any, Sequence[int], Target], tuple[Schedule, list[Tensor]]]
BUILTIN = "builtin"


@dataclass(frozen=True, eq=False)  # identity: two user kernels may share a name
class Workload:
    name: str
    params: tuple[str, ...]
    template: Template
    flops: Callable[[Sequence[int]], float]
    example: tuple[int, ...] = ()
    doc: str = ""
    validate: Callable[[Sequence[int]], None] | None = None
    cuda_template: Template | None = None  # used when the target kind is cuda (workloads/cuda_templates.py)
    kind: str = BUILTIN  # "builtin" | "template" | "compute"
    source: str = ""  # "file.py:line" of the definition, for messages
    origin: dict[str, str] = field(default_factory=dict)  # {"module", "func"}: how a build worker finds it
    numpy_reference: Callable[..., Any] | None = None  # reference=: numpy function of the input arrays

    @property
    def builtin(self) -> bool:
        return self.kind == BUILTIN

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.source})" if self.source else "")

    def template_for(self, target: Target) -> Template:
        if target.kind == "cuda":
            if self.cuda_template is not None:
                return self.cuda_template
            if self.builtin:
                raise ConfigError(f"workload {self.name} has no CUDA template")
        return self.template

    def check_args(self, args: Sequence[int]) -> tuple[int, ...]:
        try:
            args = tuple(int(a) for a in args)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"workload {self.name}: shape values must be integers, got {list(args)}") from e
        if len(args) != len(self.params):
            raise ConfigError(
                f"workload {self.name} takes {len(self.params)} shape values ({','.join(self.params)}), got {len(args)}"
            )
        if self.validate is not None:
            self.validate(args)
        return args

    def space(self, args: Sequence[int], target: str | Target = "llvm -mcpu=native") -> ConfigSpace:
        sp = ConfigSpace()
        tgt = Target.parse(target)
        sp.target = tgt
        self.template_for(tgt)(sp, self.check_args(args), tgt)
        if len(sp) < 1:
            raise UserKernelError(f"{self.label}: its config space is empty")
        return sp

    def instantiate(
        self, args: Sequence[int], config: ConfigEntity, target: str | Target
    ) -> tuple[Schedule, list[Tensor]]:
        tgt = Target.parse(target)
        config.target = tgt
        return self.template_for(tgt)(config, self.check_args(args), tgt)

    def tensors(self, args: Sequence[int], target: str | Target = "llvm") -> list[Tensor]:
        """The argument tensors of the default config (inputs first, outputs last)."""
        return _definition(self, self.check_args(args), str(Target.parse(target)))[1]

    def naive(self, args: Sequence[int], target: str | Target = "llvm") -> tuple[Schedule, list[Tensor]]:
        """The compute with nothing scheduled: the reference a device checks user kernels against."""
        tensors = self.tensors(args, target)
        outs = [t.op for t in tensors if isinstance(t.op, ComputeOp)]
        return create_schedule(outs), tensors

    def compute_hash(self, args: Sequence[int], target: str | Target = "llvm") -> str:
        """The hash of the compute graph (not the schedule); "" for built-ins, known by name."""
        if self.builtin:
            return ""
        return _definition(self, self.check_args(args), str(Target.parse(target)))[0]

    def key(self, args: Sequence[int], target: str | Target = "llvm") -> dict[str, Any]:
        k: dict[str, Any] = {"name": self.name, "args": list(self.check_args(args))}
        if not self.builtin:
            k["hash"] = self.compute_hash(args, target)
        return k

    def reference(self, args: Sequence[int], inputs: Sequence[Any]) -> list[Any]:
        """The expected outputs for these input arrays: a built-in's numpy reference, a user kernel's
        ``reference=``, or else its naive schedule run on this host."""
        if self.builtin:
            ref = reference_for(self.name)
            if ref is None:
                raise ConfigError(f"workload {self.name} has no numpy reference")
            return [np.asarray(o) for o in ref(self.check_args(args), inputs)]
        if self.numpy_reference is not None:
            out = self.numpy_reference(*inputs)
            return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
        return naive_outputs(self, args, inputs)

    def ref(self) -> str | dict[str, str]:
        """What a build worker resolves back to this workload: a built-in's name, a user kernel's origin."""
        return self.name if self.builtin else {**self.origin, "kind": self.kind, "name": self.name}


@functools.lru_cache(maxsize=64)
def _definition(wl: Workload, args: tuple[int, ...], target: str) -> tuple[str, list[Tensor]]:
    sp = wl.space(args, target)
    _, tensors = wl.instantiate(args, sp.get(0), target)
    return compute_hash(tensors), tensors


_REGISTRY: dict[str, Workload] = {}


def register(wl: Workload) -> Workload:
    old = _REGISTRY.get(wl.name)
    if old is not None and old.builtin and not wl.builtin:
        raise UserKernelError(f"{wl.label}: {wl.name!r} is a built-in workload's name; choose another")
    if old is not None and not old.builtin and old.source != wl.source:
        log.info("%s replaces %s under the name %r", wl.label, old.label, wl.name)
    _REGISTRY[wl.name] = wl
    return wl


def get_workload(name: str) -> Workload:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown workload {name!r}; known: {', '.join(sorted(_REGISTRY))} "
                          "(or name your own kernel as FILE.py:function)")
    return _REGISTRY[name]


def list_workloads() -> list[Workload]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtin() -> None:
    from farm.workloads import (  # noqa: F401  (registration side effect)
        conv,
        cuda_templates,  # noqa: F401  (attaches CUDA templates to the above)
        gemm,
    )


# --- the decorators ------------------------------------------------------------------------------


def _where(fn: Callable[..., Any]) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def _shape_params(fn: Callable[..., Any], skip: int) -> tuple[str, ...]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise UserKernelError(f"{fn.__name__} ({_where(fn)}): shape parameters must be named, not *args")
    return tuple(p.name for p in params)


def _user_frame(e: BaseException, fn: Callable[..., Any]) -> str:
    """file:line of the innermost traceback frame in the kernel's own file (else its definition)."""
    src = inspect.getsourcefile(fn) if inspect.isfunction(fn) else None
    where = ""
    tb = e.__traceback__
    while tb is not None:
        if src and tb.tb_frame.f_code.co_filename == src:
            where = f"{src}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where or _where(fn)


def _checked_result(out: Any, label: str, fn: Callable[..., Any], what: str) -> tuple[Schedule, list[Tensor]]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], Schedule)):
        raise UserKernelError(f"{label} returned {type(out).__name__}, not (schedule, [tensors]) ({_where(fn)}); "
                              f"a {what} ends with `return s, [A, B, C]`")
    sch, tensors = out
    _check_tensors(tensors, label, fn)
    return sch, list(tensors)


def _check_tensors(tensors: Any, label: str, fn: Callable[..., Any]) -> None:
    if not isinstance(tensors, (list, tuple)) or not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise UserKernelError(f"{label} must give a list of tensors, inputs first, outputs last ({_where(fn)})")
    if not isinstance(tensors[-1].op, ComputeOp):
        raise UserKernelError(f"{label}: the last tensor must be an output (a te.compute) ({_where(fn)})")
    if not any(isinstance(t.op, PlaceholderOp) for t in tensors):
        raise UserKernelError(f"{label}: no input placeholder among its tensors ({_where(fn)})")


def _guarded(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    """Call a user's function; anything it raises becomes one error naming the kernel and the line."""

    def call(*a: Any) -> Any:
        try:
            return fn(*a)
        except FarmError as e:
            raise UserKernelError(f"{label}: {e} ({_user_frame(e, fn)})") from e
        except Exception as e:
            raise UserKernelError(f"{label} raised {type(e).__name__}: {e} ({_user_frame(e, fn)})") from e

    return call


def _user_flops(wl_box: list[Workload]) -> Callable[[Sequence[int]], float]:
    def flops(args: Sequence[int]) -> float:
        tensors = wl_box[0].tensors(args)
        return graph_flops([t.op for t in tensors if isinstance(t.op, ComputeOp)])

    return flops


def _make(fn: Callable[..., Any], name: str, kind: str, template: Template, params: tuple[str, ...],
          reference: Callable[..., Any] | None, example: Sequence[int] | None, doc: str | None,
          flops: Callable[[Sequence[int]], float] | None, validate: Callable[[Sequence[int]], None] | None,
          builtin: bool) -> Workload:
    box: list[Workload] = []
    wl = Workload(
        name=name, params=params, template=template, flops=flops or _user_flops(box),
        example=tuple(example or ()), doc=doc if doc is not None else (inspect.getdoc(fn) or "").split("\n")[0],
        validate=validate, kind=BUILTIN if builtin else kind, source="" if builtin else _where(fn),
        origin={} if builtin else {"module": fn.__module__, "func": fn.__name__}, numpy_reference=reference,
    )
    box.append(wl)
    return register(wl)


def template(name: str, *, reference: Callable[..., Any] | None = None, example: Sequence[int] | None = None,
             doc: str | None = None, flops: Callable[[Sequence[int]], float] | None = None,
             validate: Callable[[Sequence[int]], None] | None = None,
             builtin: bool = False) -> Callable[[Callable[..., Any]], Workload]:
    """Register a schedule template, AutoTVM style::

        @farm.template("rowsoftmax")
        def rowsoftmax(cfg, n, m):           # shape values as ints; cfg.target is the Target
            ...
            cfg.define_split("tile_row", n, num_outputs=2)
            return s, [A, B]                 # inputs first, outputs last

    ``reference``: a numpy function of the input arrays returning the outputs; without it, devices
    check against the naive schedule of the same compute. The decorated name becomes the Workload.
    """

    def deco(fn: Callable[..., Any]) -> Workload:
        params = _shape_params(fn, 1)
        label = f"template {name} ({_where(fn)})" if not builtin else f"template {name}"
        body = fn if builtin else _guarded(fn, label)

        def run(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
            cfg.target = target
            out = body(cfg, *args)
            return _checked_result(out, label, fn, "template")

        return _make(fn, name, "template", run, params, reference, example, doc, flops, validate, builtin)

    return deco


def compute(name: str, *, reference: Callable[..., Any] | None = None, example: Sequence[int] | None = None,
            doc: str | None = None) -> Callable[[Callable[..., Any]], Workload]:
    """Register a compute definition without a template; the farm generates its schedule space::

        @farm.compute("layernorm")
        def layernorm(n, d):
            ...
            return [X, gamma, beta, Y]       # inputs first, outputs last
    """

    def deco(fn: Callable[..., Any]) -> Workload:
        from farm.workloads.auto import auto_schedule

        params = _shape_params(fn, 0)
        label = f"compute {name} ({_where(fn)})"
        body = _guarded(fn, label)

        def run(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
            cfg.target = target
            tensors = body(*args)
            _check_tensors(tensors, label, fn)
            try:
                return auto_schedule(cfg, list(tensors), target), list(tensors)
            except FarmError as e:
                raise UserKernelError(f"{label}: the generated schedule failed: {e}") from e

        return _make(fn, name, "compute", run, params, reference, example, doc, None, None, False)

    return deco


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(text, str):
        return tuple(int(x) for x in text)
    try:
        vals = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"shape {text!r} must be comma-separated integers, e.g. 512,512,512") from e
    if not vals or any(v < 0 for v in vals):
        raise ConfigError(f"shape {text!r} must be non-negative integers")
    return vals


def resolve_config(space: ConfigSpace, config: Any) -> ConfigEntity:
    """'default' (index 0), an index, JSON text, or a dict with index/knobs."""
    if config is None or config == "default":
        return space.get(0)
    if isinstance(config, ConfigEntity):
        return config
    if isinstance(config, str) and config.strip().lstrip("-").isdigit():
        return space.get(int(config))
    return space.from_json(config)


def build_workload(workload: str | Workload, args: Sequence[int], config: Any = "default",
                   target: str | Target = "llvm -mcpu=native") -> Any:
    """Instantiate and compile one config of a workload; returns a farm.build Module."""
    from farm.compiler.builder import build

    wl = get_workload(workload) if isinstance(workload, str) else workload
    tgt = Target.parse(target)
    space = wl.space(args, tgt)
    cfg = resolve_config(space, config)
    sch, tensors = wl.instantiate(args, cfg, tgt)
    mod = build(sch, tensors, tgt, name=wl.name, workload=wl.key(args, tgt), flops=wl.flops(wl.check_args(args)))
    mod.config = cfg
    return mod


def build_naive(wl: Workload, args: Sequence[int], target: str | Target) -> Any:
    """The naive schedule of a user kernel's compute, built for ``target``: the device-side reference."""
    from farm.compiler.builder import build

    tgt = Target.parse(target)
    sch, tensors = wl.naive(args, tgt)
    return build(sch, tensors, tgt, name=f"{wl.name}.naive", workload=None, flops=0.0)


def naive_outputs(wl: Workload, args: Sequence[int], inputs: Sequence[Any]) -> list[Any]:
    """Run the naive schedule of ``wl`` on this host (the client-side reference for CUDA devices)."""
    from farm.runtime.buffers import aligned_empty

    mod = build_naive(wl, args, "llvm")
    specs = mod.artifact.args
    outs = [aligned_empty(sp.shape, sp.dtype) for sp in specs if sp.role == "out"]
    it_in, it_out = iter(inputs), iter(outs)
    mod(*[next(it_out) if sp.role == "out" else np.ascontiguousarray(next(it_in)) for sp in specs])
    return outs
