"""What bringing a fleet up and down reports: per-device outcomes, and events as they happen.

``Fleet.up()`` and ``down()`` return a ``FleetResult`` (one ``DeviceOutcome`` per device, in
file order). While they run, and while ``Fleet.watch()`` supervises, each change is also handed
to an ``on_event`` callback the moment it happens, so a command can print a board's line
without waiting for the slowest board.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.registry import FleetSpec
from farm.errors import FarmError


class FleetError(FarmError):
    """The fleet as a whole cannot be served: the tracker is unreachable or refuses the token."""


@dataclass(frozen=True)
class DeviceOutcome:
    """How one device fared: ``ok`` with fingerprints, or the reason it failed."""

    name: str
    ok: bool
    message: str
    error_type: str = ""
    servers: tuple[str, ...] = ()
    fingerprint: dict[str, Any] = field(default_factory=dict)


# Event kinds, in the order a device meets them.
UP, FAILED, RESTARTING, BACK = "up", "failed", "restarting", "back"


@dataclass(frozen=True)
class FleetEvent:
    """One change of one device: brought ``up`` or ``failed``; ``restarting`` (why, which attempt);
    ``back`` after a restart. ``attempt`` counts restarts; ``retry_in`` is set on a failed one."""

    name: str
    kind: str
    message: str
    error_type: str = ""
    attempt: int = 0
    retry_in: float = 0.0


EventSink = Callable[[FleetEvent], None]


def no_events(event: FleetEvent) -> None:
    """The default sink: events are also logged by the supervisor, so nothing is lost."""


class FleetResult(Mapping[str, DeviceOutcome]):
    """Per-device outcomes in file order; ``.failed`` holds the ones that went wrong."""

    def __init__(self, outcomes: list[DeviceOutcome]) -> None:
        self._by_name = {o.name: o for o in outcomes}

    def __getitem__(self, name: str) -> DeviceOutcome:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def failed(self) -> dict[str, DeviceOutcome]:
        return {n: o for n, o in self._by_name.items() if not o.ok}

    @property
    def ok(self) -> bool:
        return not self.failed


def fleet_state_dir(state_root: Path, spec: FleetSpec) -> Path:
    """Where ``up`` keeps one devices file's state: pidfiles, logs, token, status.json."""
    tag = hashlib.sha256(str(Path(spec.path).resolve()).encode()).hexdigest()[:10]
    return state_root / f"{Path(spec.path).stem}-{tag}"


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def fingerprint_summary(fp: dict[str, Any]) -> str:
    """``aarch64 cortex-a72 4 cores``: what a device line shows of a registered fingerprint."""
    cpu = fp.get("cpu") if isinstance(fp.get("cpu"), dict) else {}
    parts = [
        str(fp.get("triple") or fp.get("isa") or cpu.get("triple") or ""),
        str(cpu.get("name") or fp.get("cpu_name") or ""),
    ]
    cores = fp.get("cores") or cpu.get("cores")
    if cores:
        parts.append(f"{cores} cores")
    return " ".join(p for p in parts if p) or "registered"
