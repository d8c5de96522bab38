"""The campaign driver's records: a task and where each of its configs is, and the results."""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.campaign.config import WorkloadSpec
from farm.campaign.idle import idle_fraction
from farm.records.artifact import Artifact
from farm.records.identity import machine_identity
from rpc.errors import RpcError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Building:
    """A config being compiled by a Ray build task."""

    index: int
    started: float  # time.monotonic()


@dataclass(frozen=True)
class Built:
    """A compiled config: its artifact and how long the build took."""

    artifact: Artifact
    build_s: float


@dataclass(frozen=True)
class InFlight:
    """A config submitted to the farm: the job, and what it takes to submit it again."""

    job: Any  # farm.client.session.Job
    built: Built
    tries: int  # submissions before this one that a lost tracker connection took along
    gen: int  # the connection generation it was submitted on (link.FarmLink)


@dataclass(frozen=True)
class Retry:
    """A config to submit again once the tracker is back."""

    built: Built
    tries: int


class DeviceFingerprints:
    """The fingerprints of each key's device servers by name, as the tracker's ``describe`` lists them.

    A result names the server that measured it; one that joined after the campaign started is
    looked up once more, then remembered as unknown (it may have left again)."""

    def __init__(self, describe: Callable[[str], list[dict[str, Any]]]) -> None:
        self._describe = describe
        self._by_key: dict[str, dict[str, dict[str, Any]]] = {}
        self._unknown: set[tuple[str, str]] = set()

    def load(self, key: str) -> list[dict[str, Any]]:
        """Ask the tracker for ``key``'s devices (name, fingerprint); remember their fingerprints."""
        devs = list(self._describe(key) or [])
        known = self._by_key.setdefault(key, {})
        for d in devs:
            known[str(d.get("name") or "")] = dict(d.get("fingerprint") or {})
        return devs

    def of(self, key: str, name: str) -> dict[str, Any] | None:
        """The fingerprint of device ``name`` under ``key``; None if the tracker does not know it."""
        known = self._by_key.get(key, {})
        if name not in known and (key, name) not in self._unknown:
            try:
                self.load(key)
            except RpcError as e:  # a lost tracker: the caller records the machine as unknown
                log.debug("describe %r for device %s: %s: %s", key, name, type(e).__name__, e)
            known = self._by_key.get(key, {})
            if name not in known:
                self._unknown.add((key, name))
        fp = known.get(name)
        return dict(fp) if fp is not None else None

    def identities(self, key: str) -> set[str]:
        """The machine identities of ``key``'s devices seen so far ("" for a device that names no hardware)."""
        return {machine_identity(fp) for fp in self._by_key.get(key, {}).values()}

    def measured_by(self, task: Task, device: str) -> dict[str, Any]:
        """The fingerprint to record for a result of ``task`` that device server ``device`` measured."""
        if not device:  # no device measured it (a failed build, a lost job), or a server too old to say
            return task.fingerprint
        fp = self.of(task.key, device)
        if fp is None:  # it left before its fingerprint was read: say unknown rather than guess
            log.warning("%s: device %s is no longer registered; its record names no machine", task.name, device)
            return {}
        return fp

    def set_aside(self, key: str, records: list[Any]) -> list[Any]:
        """``records`` with those of ``key`` that no machine among its devices measured set aside.

        The tuner and the budget tell a task's own records by device key, so such a record goes to
        them under a key of its own (``key@identity``, in memory only): another device's history,
        which transfer learns from, never a resumed trial. Records without a fingerprint stay."""
        mine = self.identities(key)
        if not mine or "" in mine:  # a device that names no hardware: nothing to tell apart
            return records
        out: list[Any] = []
        aside: Counter[Any] = Counter()
        for r in records:
            if r.device_key == key:
                m = r.machine
                if m.known and m.identity not in mine:
                    aside[m] += 1
                    r = dataclasses.replace(r, device_key=f"{key}@{m.identity}")
            out.append(r)
        if aside:
            log.info("%s: %d records measured on other machines (%s) set aside: history for transfer, "
                     "not resumed trials", key, sum(aside.values()),
                     ", ".join(f"{m}: {n}" for m, n in aside.most_common()))
        return out


@dataclass
class Task:
    """One (workload, device key) tuning task."""

    wl: WorkloadSpec
    key: str
    target: str
    fingerprint: dict[str, Any]
    space: Any
    tuner: Any
    budget: int
    flops: float
    done_trials: int = 0
    errors: int = 0
    best_gflops: float = 0.0
    best_index: int | None = None
    default_gflops: float | None = None
    pending: list[int] = field(default_factory=list)  # proposed, not yet built
    builds: dict[Any, Building] = field(default_factory=dict)  # by Ray object ref
    jobs: dict[int, InFlight] = field(default_factory=dict)  # by config index
    resubmit: dict[int, Retry] = field(default_factory=dict)  # results a lost tracker connection took along
    held: dict[int, Built] = field(default_factory=dict)  # built, waiting for the build phase to end
    history: list[tuple[int, float]] = field(default_factory=list)  # (trial, best so far)
    finished: bool = False
    workload: Any = None  # the farm.workloads Workload
    wl_hash: str = ""  # a user kernel's compute hash ("" for built-ins)
    reference: Artifact | None = None  # what devices check a user kernel against (built once)
    error: str = ""  # why the task could not run at all (its template raised, its space is empty...)
    checked: int = 0  # OK records whose outputs the device compared with a reference
    nbytes: int = 0  # argument bytes, for GB/s
    best_s: float | None = None
    default_s: float | None = None
    weight: float = 1.0  # occurrences in the campaign's networks: its latency's weight end to end

    @property
    def name(self) -> str:
        return f"{self.wl.name}({','.join(map(str, self.wl.shape))})@{self.key}"

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.builds) + len(self.jobs) + len(self.resubmit) + len(self.held)


@dataclass(frozen=True)
class TaskSummary:
    task: str
    workload: str
    shape: tuple[int, ...]
    device_key: str
    trials: int
    errors: int
    best_gflops: float
    best_index: int | None
    default_gflops: float | None
    workload_hash: str = ""
    best_s: float | None = None
    default_s: float | None = None
    best_gbps: float = 0.0
    checked: int = 0
    error: str = ""
    weight: float = 1.0

    @property
    def ok(self) -> bool:
        """The task found at least one config that ran correctly."""
        return self.best_s is not None and not self.error

    @property
    def speedup(self) -> float | None:
        if self.default_s and self.best_s:
            return self.default_s / self.best_s
        return None

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "workload": self.workload, "shape": list(self.shape), "device_key": self.device_key,
                "workload_hash": self.workload_hash, "trials": self.trials, "errors": self.errors,
                "best_gflops": self.best_gflops, "best_s": self.best_s, "best_gbps": self.best_gbps,
                "best_index": self.best_index, "default_gflops": self.default_gflops, "speedup": self.speedup,
                "checked": self.checked, "ok": self.ok, "error": self.error, "weight": self.weight}


@dataclass
class CampaignResult:
    name: str
    log: Path
    tasks: list[TaskSummary]
    wall_s: float
    measured: int
    resumed: int
    build_nodes: dict[str, int]
    device_idle_fraction: float
    builds_s: float
    resubmitted: int = 0  # jobs submitted again after a lost tracker connection
    reconnects: int = 0
    idle_timeline: list[tuple[float, float, float]] = field(default_factory=list)  # see idle.py
    # trials_total campaigns: per device key, the budget, what was spent, each grant (task, trials, why)
    # and the estimated weighted latency after each trial (trials spent, seconds)
    allocation: dict[str, Any] = field(default_factory=dict)
    networks: list[dict[str, Any]] = field(default_factory=list)  # baselines.end_to_end, per network and key

    def idle_fraction_between(self, t0: float, t1: float) -> float | None:
        """Device idle share between t0 and t1 seconds after the start (tracker's view)."""
        return idle_fraction(self.idle_timeline, t0, t1)

    def to_json(self) -> dict[str, Any]:
        return {"campaign": self.name, "log": str(self.log), "tasks": [t.to_json() for t in self.tasks],
                "wall_s": self.wall_s, "measured": self.measured, "resumed": self.resumed,
                "build_nodes": self.build_nodes, "device_idle_fraction": self.device_idle_fraction,
                "builds_s": self.builds_s, "resubmitted": self.resubmitted, "reconnects": self.reconnects,
                "device_idle_fraction_trained": self.idle_fraction_between(self.wall_s / 2, self.wall_s),
                "allocation": self.allocation, "networks": self.networks}
