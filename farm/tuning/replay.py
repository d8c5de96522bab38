"""Replay: run tuners against a log of real measurements instead of devices.

A dataset is a shared log holding real measurements of many configs of one
task (``benchmarks/record_dataset.py`` records one). :class:`ReplayOracle`
answers "measure config i" from it; tuners are restricted to its configs
(the ``pool``), so comparisons over many seeds are cheap and fair: every
tuner sees the same numbers, noise included.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from farm.errors import FarmError
from farm.log import LogRecord, load_log
from farm.tuning.model import record_context

log = logging.getLogger(__name__)


class ReplayError(FarmError):
    """A replay asked for a config the dataset does not hold, or the dataset is unusable."""


class ReplayOracle:
    """GFLOPS per config index of one task, from recorded measurements.

    Repeated measurements of a config keep the best (as a tuner would); a
    failed config is 0.0.
    """

    def __init__(self, records: Sequence[LogRecord], source: str = "<records>") -> None:
        if not records:
            raise ReplayError(f"{source}: no records")
        tasks = {(r.workload, r.args, r.device_key) for r in records}
        if len(tasks) != 1:
            raise ReplayError(f"{source}: holds {len(tasks)} tasks {sorted(tasks)[:3]}...; filter to one first")
        self.source = source
        self.records = list(records)
        r0 = records[0]
        self.context = record_context(r0)
        self.gflops: dict[int, float] = {}
        space = self.space()
        for r in records:
            g = r.gflops if r.ok else 0.0
            i = space.locate(r.config_index, r.knobs)  # the recording's template may number differently
            self.gflops[i] = max(g, self.gflops.get(i, 0.0))
        self.best_known = max(self.gflops.values())
        self.failures = sum(1 for g in self.gflops.values() if g <= 0)

    @classmethod
    def from_log(cls, path: str | os.PathLike[str], workload: str | None = None,
                 device: str | None = None) -> ReplayOracle:
        from farm.log.query import matches

        recs = [r for r in load_log(path).records if matches(r, workload=workload, device=device)]
        return cls(recs, str(path))

    @property
    def pool(self) -> list[int]:
        return sorted(self.gflops)

    def __len__(self) -> int:
        return len(self.gflops)

    def space(self) -> Any:
        from farm.workloads.registry import get_workload

        return get_workload(self.context.workload).space(self.context.args, self.context.target)

    def measure(self, indices: Sequence[int]) -> list[tuple[int, float]]:
        out = []
        for i in indices:
            if int(i) not in self.gflops:
                raise ReplayError(f"{self.source}: config {i} was never measured; restrict the tuner to pool")
            out.append((int(i), self.gflops[int(i)]))
        return out


@dataclass(frozen=True)
class ReplayRun:
    """Best-so-far GFLOPS after each trial of one tuner run."""

    tuner: str
    seed: int
    best_so_far: tuple[float, ...]
    best_known: float

    def best_after(self, trials: int) -> float:
        """Best GFLOPS within the first ``trials`` (a run that stopped early stays at its best)."""
        if not self.best_so_far:
            return 0.0
        return self.best_so_far[min(trials, len(self.best_so_far)) - 1]

    def trials_to(self, fraction: float) -> int | None:
        """Trials until best-so-far >= fraction x best known; None if never."""
        goal = fraction * self.best_known
        for n, g in enumerate(self.best_so_far, 1):
            if g >= goal:
                return n
        return None

    def to_json(self) -> dict[str, Any]:
        return {"tuner": self.tuner, "seed": self.seed, "best_so_far": list(self.best_so_far),
                "best_known": self.best_known}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReplayRun:
        return cls(str(d["tuner"]), int(d["seed"]), tuple(float(x) for x in d["best_so_far"]),
                   float(d["best_known"]))


def run_replay(tuner: Any, oracle: ReplayOracle, budget: int, batch: int = 16, label: str | None = None,
               stop_at: float | None = None, min_trials: int = 0) -> ReplayRun:
    """Drive ``tuner`` (built with ``pool=oracle.pool``) for up to ``budget``
    trials in batches of ``batch``. With ``stop_at``, stop once best-so-far is
    at least that fraction of the best known and ``min_trials`` are done (the
    curve is flat after that, so ``best_after`` stays right)."""
    best, traj = 0.0, []  # type: tuple[float, list[float]]
    while len(traj) < budget and not tuner.done:
        idx = tuner.propose(min(batch, budget - len(traj)))
        if not idx:
            break
        res = oracle.measure(idx)
        tuner.observe(res)
        for _, g in res:
            best = max(best, g)
            traj.append(best)
        if stop_at is not None and len(traj) >= min_trials and best >= stop_at * oracle.best_known:
            break
    return ReplayRun(label or tuner.name, tuner.seed, tuple(traj), oracle.best_known)
