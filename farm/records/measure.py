"""Measurement records: the outcome enum, run options and results.

A result holds costs *or* an error kind with a message, never an exception
object. Records are frozen dataclasses with ``to_json``/``from_json``.
"""
from __future__ import annotations

import enum
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Outcome(str, enum.Enum):  # noqa: UP042 - str() of a member stays 'Outcome.OK' in messages
    """How one measurement ended. Classified by type at the boundaries."""

    OK = "OK"
    COMPILE_ERROR = "COMPILE_ERROR"
    BUILD_TIMEOUT = "BUILD_TIMEOUT"
    LOAD_ERROR = "LOAD_ERROR"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    WRONG_ANSWER = "WRONG_ANSWER"
    DEVICE_LOST = "DEVICE_LOST"


@dataclass(frozen=True)
class RunOptions:
    """TVM time_evaluator semantics, plus the budgets the device enforces.

    ``number`` calls per repeat (raised until one repeat lasts
    ``min_repeat_ms``), ``repeat`` repeats, one warm-up call first.
    """

    number: int = 1
    repeat: int = 3
    min_repeat_ms: float = 50.0
    cooldown_ms: float = 0.0
    flush_cache: bool = False
    check: bool = True
    seed: int = 0
    rtol: float = 1e-4
    timeout_s: float = 30.0
    num_threads: int = 0  # 0: all cores of the device

    def __post_init__(self) -> None:
        if self.number < 1 or self.repeat < 1:
            raise ValueError("number and repeat must be >= 1")
        if self.min_repeat_ms < 0 or self.timeout_s <= 0:
            raise ValueError("min_repeat_ms must be >= 0 and timeout_s > 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class MeasureResult:
    """One measurement: raw per-call costs in seconds, or an error."""

    outcome: Outcome
    costs: tuple[float, ...] = ()
    message: str = ""
    flops: float = 0.0
    number: int = 0
    load_s: float = 0.0
    run_s: float = 0.0
    device_key: str = ""
    checked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def median_s(self) -> float:
        return statistics.median(self.costs) if self.costs else float("inf")

    @property
    def gflops(self) -> float:
        if not self.ok or not self.costs or self.median_s <= 0:
            return 0.0
        return self.flops / self.median_s / 1e9

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "costs": list(self.costs),
            "message": self.message,
            "flops": self.flops,
            "number": self.number,
            "load_s": self.load_s,
            "run_s": self.run_s,
            "device_key": self.device_key,
            "checked": self.checked,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MeasureResult:
        return cls(
            outcome=Outcome(d["outcome"]),
            costs=tuple(float(c) for c in d.get("costs", ())),
            message=str(d.get("message", "")),
            flops=float(d.get("flops", 0.0)),
            number=int(d.get("number", 0)),
            load_s=float(d.get("load_s", 0.0)),
            run_s=float(d.get("run_s", 0.0)),
            device_key=str(d.get("device_key", "")),
            checked=bool(d.get("checked", False)),
            extra=dict(d.get("extra", {})),
        )

    @classmethod
    def error(cls, outcome: Outcome, message: str, **kw: Any) -> MeasureResult:
        return cls(outcome=outcome, message=message, **kw)
