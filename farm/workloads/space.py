"""Config spaces: tunable knobs of a schedule template, index-addressable.

A template is called twice in AutoTVM's manner: once with a ConfigSpace that
records the knobs it defines, then with a ConfigEntity (one point of the
space) that answers them. The index is mixed radix over the knobs in
definition order, so config index <-> knob values is a bijection.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from farm.errors import ConfigError, ScheduleError
from farm.te.expr import IterVar


@dataclass(frozen=True)
class SplitEntity:
    """Split factors, outermost first; size[0] is -1 (whatever remains)."""

    size: tuple[int, ...]

    def apply(self, sch: Any, stage: Any, axis: IterVar) -> list[IterVar]:
        st = sch[stage]
        out: list[IterVar] = []
        for f in reversed(self.size[1:]):
            axis, inner = st.split(axis, factor=int(f))
            out.append(inner)
        out.append(axis)
        return list(reversed(out))

    @property
    def val(self) -> tuple[int, ...]:
        return self.size

    def to_json(self) -> list[int]:
        return list(self.size)


class ReorderEntity(tuple):  # type: ignore[type-arg]
    """A permutation knob's value: ``cfg["order"].apply(s, C, [i, j, k])`` reorders those axes."""

    @property
    def perm(self) -> tuple[int, ...]:
        return tuple(self)

    @property
    def val(self) -> tuple[int, ...]:
        return tuple(self)

    def apply(self, sch: Any, stage: Any, axes: Sequence[IterVar]) -> list[IterVar]:
        ordered = [axes[i] for i in self]
        sch[stage].reorder(*ordered)
        return ordered


class KnobInt(int):
    """An integer or boolean knob value that also answers AutoTVM's ``.val``."""

    _raw: Any

    @property
    def val(self) -> Any:
        return self._raw


class KnobFloat(float):
    _raw: Any

    @property
    def val(self) -> Any:
        return self._raw


class KnobStr(str):
    _raw: Any

    @property
    def val(self) -> Any:
        return self._raw


def knob_value(raw: Any) -> Any:
    """What a template reads for a knob: the raw value (it compares and computes as before), plus
    ``.val`` and, for splits and orders, ``.apply`` (AutoTVM's habits)."""
    if isinstance(raw, SplitEntity):
        return raw
    if isinstance(raw, tuple):
        return ReorderEntity(raw)
    for kind, cls in ((int, KnobInt), (float, KnobFloat), (str, KnobStr)):
        if isinstance(raw, kind):
            v = cls(raw)
            v._raw = raw
            return v
    return raw


class Knob:
    def __init__(self, name: str, kind: str, options: Sequence[Any]) -> None:
        if not options:
            raise ScheduleError(f"knob {name}: needs at least one option")
        self.name, self.kind, self.options = name, kind, list(options)

    def encode(self, value: Any) -> Any:
        return (
            value.to_json() if isinstance(value, SplitEntity) else (list(value) if isinstance(value, tuple) else value)
        )

    def find(self, raw: Any) -> int:
        for n, opt in enumerate(self.options):
            if self.encode(opt) == raw:
                return n
        shown = ", ".join(json.dumps(self.encode(o)) for o in self.options[:8])
        more = f" ... ({len(self.options)} in all)" if len(self.options) > 8 else ""
        raise ConfigError(f"knob {self.name!r}: {json.dumps(raw)} is not one of its options [{shown}{more}]")


def _split_options(
    extent: int, levels: int, candidates: Sequence[Sequence[int]] | None, max_inner: int | None
) -> list[SplitEntity]:
    """Inner factors per level from ``candidates`` (default: powers of two and
    divisors), keeping the inner product within the extent."""
    def default_cands() -> list[int]:
        c = {1 << p for p in range(0, int(math.log2(max(extent, 1))) + 1)}
        c |= {d for d in range(1, min(extent, 64) + 1) if extent % d == 0}
        return sorted(x for x in c if x <= extent)

    levels_c = [list(candidates[n]) if candidates else default_cands() for n in range(levels - 1)]
    out: list[SplitEntity] = []

    def rec(n: int, prod: int, acc: list[int]) -> None:
        if n == levels - 1:
            if max_inner is None or prod <= max_inner:
                out.append(SplitEntity(tuple([-1] + acc)))
            return
        for f in levels_c[n]:
            if prod * f <= extent:
                rec(n + 1, prod * f, acc + [f])

    rec(0, 1, [])
    if not out:
        out.append(SplitEntity(tuple([-1] + [1] * (levels - 1))))
    return out


class ConfigSpace:
    """The knobs a template defines; ``space.get(i)`` is config number i."""

    def __init__(self) -> None:
        self.knobs: dict[str, Knob] = {}
        self.target: Any = None  # the Target a template instantiates for (set by the registry)

    # --- definition (AutoTVM names) ---------------------------------------
    def define_split(self, name: str, extent: int | IterVar, num_outputs: int = 2,
                     candidates: Sequence[Sequence[int]] | None = None, max_inner: int | None = None) -> None:
        ext = extent.extent if isinstance(extent, IterVar) else int(extent)
        self._add(Knob(name, "split", _split_options(ext, num_outputs, candidates, max_inner)))

    def define_knob(self, name: str, options: Sequence[Any]) -> None:
        self._add(Knob(name, "other", options))

    def define_reorder(self, name: str, orders: Sequence[Sequence[int]]) -> None:
        self._add(Knob(name, "reorder", [tuple(o) for o in orders]))

    def _add(self, knob: Knob) -> None:
        if knob.name in self.knobs:
            raise ScheduleError(f"knob {knob.name} is defined twice")
        self.knobs[knob.name] = knob

    def __getitem__(self, name: str) -> Any:
        # While the space is being collected a template reads the first option.
        if name not in self.knobs:
            raise ScheduleError(f"knob {name!r} is read before it is defined (define_split/define_knob first)")
        return knob_value(self.knobs[name].options[0])

    # --- addressing ----------------------------------------------------------
    def __len__(self) -> int:
        n = 1
        for k in self.knobs.values():
            n *= len(k.options)
        return n

    def get(self, index: int) -> ConfigEntity:
        if not 0 <= index < len(self):
            raise ConfigError(f"config index {index} is outside the space (0..{len(self) - 1})")
        vals: dict[str, Any] = {}
        rest = index
        for k in self.knobs.values():
            rest, r = divmod(rest, len(k.options))
            vals[k.name] = k.options[r]
        return ConfigEntity(self, index, vals)

    def index_of(self, choices: dict[str, int]) -> int:
        idx, mul = 0, 1
        for k in self.knobs.values():
            idx += choices.get(k.name, 0) * mul
            mul *= len(k.options)
        return idx

    def locate(self, index: int, knobs: dict[str, Any] | None) -> int:
        """This space's index of a config recorded as (index, knobs) - by its knob
        values when it has them, since a template that gained or reordered knobs
        renumbers its space; knobs a record predates take their first option."""
        if knobs:
            try:
                return self.from_json({"knobs": knobs}).index
            except (ConfigError, ValueError, KeyError, TypeError):
                pass  # knobs this template no longer has: fall back to the index
        return int(index)

    def from_json(self, data: Any) -> ConfigEntity:
        """From {"index": i} or {"knobs": {...}} (as ConfigEntity.to_json writes)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise ConfigError(f"config is not valid JSON: {e}") from e
        if isinstance(data, int):
            return self.get(data)
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        knobs = data.get("knobs")
        if knobs is None:
            if "index" in data:
                return self.get(int(data["index"]))
            knobs = data  # a bare {knob: value} object, as `farm measure --config` documents
        if not isinstance(knobs, dict):
            raise ConfigError('config "knobs" must be an object')
        unknown = set(knobs) - set(self.knobs)
        if unknown:
            raise ConfigError(f"unknown knob(s) {sorted(unknown)}; this template has {list(self.knobs)}")
        choice = {name: self.knobs[name].find(raw) for name, raw in knobs.items()}
        return self.get(self.index_of(choice))

    def __iter__(self) -> Iterator[ConfigEntity]:
        for i in range(len(self)):
            yield self.get(i)

    def dims(self) -> list[int]:
        return [len(k.options) for k in self.knobs.values()]

    def choices(self, index: int) -> list[int]:
        out = []
        for k in self.knobs.values():
            index, r = divmod(index, len(k.options))
            out.append(r)
        return out


class ConfigEntity:
    """One point of a ConfigSpace."""

    def __init__(self, space: ConfigSpace, index: int, values: dict[str, Any]) -> None:
        self.space, self.index, self.values = space, index, values
        self.target: Any = space.target

    # Templates call define_* again when instantiated; those are no-ops here.
    def define_split(self, name: str, *a: Any, **k: Any) -> None:
        self._known(name)

    def define_knob(self, name: str, *a: Any, **k: Any) -> None:
        self._known(name)

    def define_reorder(self, name: str, *a: Any, **k: Any) -> None:
        self._known(name)

    def _known(self, name: str) -> None:
        if name not in self.values:
            raise ScheduleError(f"knob {name} was not in the space this config came from")

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            raise ScheduleError(f"knob {name!r} is not in this config's space (knobs: {list(self.values)})")
        return knob_value(self.values[name])

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "knobs": {n: self.space.knobs[n].encode(v) for n, v in self.values.items()}}

    def __repr__(self) -> str:
        return f"Config({json.dumps(self.to_json())})"
