"""Workload registry: compute definition + numpy reference + CPU template.

A workload is named ("matmul") and instantiated with integer arguments (its
shape, e.g. M,N,K). Its template defines the config space; the same template
instantiated with one config gives the schedule to build.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm.errors import ConfigError
from farm.target import Target
from farm.te.schedule import Schedule
from farm.te.tensor import Tensor
from farm.workloads.space import ConfigEntity, ConfigSpace

Template = Callable[[Any, Sequence[int], Target], tuple[Schedule, list[Tensor]]]


@dataclass(frozen=True)
class Workload:
    name: str
    params: tuple[str, ...]
    template: Template
    reference: Callable[[Sequence[int], Sequence[np.ndarray]], list[np.ndarray]]
    flops: Callable[[Sequence[int]], float]
    example: tuple[int, ...]
    doc: str = ""
    validate: Callable[[Sequence[int]], None] | None = None
    cuda_template: Template | None = None  # used when the target kind is cuda (workloads/cuda_templates.py)

    def template_for(self, target: Target) -> Template:
        if target.kind == "cuda":
            if self.cuda_template is None:
                raise ConfigError(f"workload {self.name} has no CUDA template")
            return self.cuda_template
        return self.template

    def check_args(self, args: Sequence[int]) -> tuple[int, ...]:
        args = tuple(int(a) for a in args)
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
        self.template_for(tgt)(sp, self.check_args(args), tgt)
        return sp

    def instantiate(
        self, args: Sequence[int], config: ConfigEntity, target: str | Target
    ) -> tuple[Schedule, list[Tensor]]:
        tgt = Target.parse(target)
        return self.template_for(tgt)(config, self.check_args(args), tgt)

    def key(self, args: Sequence[int]) -> dict[str, Any]:
        return {"name": self.name, "args": list(self.check_args(args))}


_REGISTRY: dict[str, Workload] = {}


def register(wl: Workload) -> Workload:
    _REGISTRY[wl.name] = wl
    return wl


def get_workload(name: str) -> Workload:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown workload {name!r}; known: {', '.join(sorted(_REGISTRY))}")
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


def build_workload(name: str, args: Sequence[int], config: Any = "default",
                   target: str | Target = "llvm -mcpu=native") -> Any:
    """Instantiate and compile one config of a workload; returns a farm.build Module."""
    from farm.compiler.builder import build

    wl = get_workload(name)
    tgt = Target.parse(target)
    space = wl.space(args, tgt)
    cfg = resolve_config(space, config)
    sch, tensors = wl.instantiate(args, cfg, tgt)
    mod = build(sch, tensors, tgt, name=name, workload=wl.key(args), flops=wl.flops(wl.check_args(args)))
    mod.config = cfg
    return mod
