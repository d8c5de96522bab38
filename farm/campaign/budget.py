"""The driver's side of a ``trials_total`` campaign: the scheduler (``scheduler.py``) fed from the
driver's tasks and the shared log, and its grants turned into how far each task may go.

A task proposes, builds and measures only the trials granted to it. A device key gets its next batch
once less than a batch of its grants is outstanding (or fewer than its free devices): on a farm that
times while it builds, the next batch is chosen while the last one finishes; with exclusive timing,
only after the last one's results are in.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.campaign.scheduler import TaskScheduler
from farm.campaign.tasks import Task
from farm.records.measure import MeasureResult, Outcome


class Allocation:
    """One budget per device key, shared by its tasks; resumes from the log's records."""

    def __init__(self, spec: Any, tasks: Sequence[Task], records: Sequence[Any]) -> None:
        self.spec = spec
        self.sched = TaskScheduler({k: int(spec.trials_total) for k in spec.device_keys}, batch=spec.batch_size,
                                   warmup=spec.warmup, policy=spec.scheduler)
        self.ids: dict[int, int] = {}
        self.names: list[str] = []
        self.curves: dict[str, list[tuple[int, float]]] = {k: [] for k in spec.device_keys}
        for t in tasks:
            i = self.sched.add_task(t.key, t.weight, t.flops, t.wl.name)
            self.ids[id(t)] = i
            self.names.append(t.name)
            if t.error:
                self.sched.close(i)
        keys = set(spec.device_keys)
        for r in records:  # what similar tasks (same operator, other shapes) reached on each device key
            if r.ok and r.gflops > 0 and r.device_key in keys:
                self.sched.note_similar(r.device_key, r.workload, r.gflops)
        # Resume: the log's trials were spent; replaying them in log order continues the allocation.
        mine = {(t.wl.name, tuple(t.wl.shape), t.key, t.wl_hash): t for t in tasks}
        for r in records:
            t = mine.get((r.workload, tuple(r.args), r.device_key, r.workload_hash))
            if t is not None:
                self._observe(t, r.median_s if r.ok else None, r.outcome is not Outcome.DEVICE_LOST, True)

    def limit(self, t: Task) -> int:
        """How many trials ``t`` may have measured, in flight or resumed: what it was granted."""
        return self.sched.tasks[self.ids[id(t)]].granted

    def grant(self, tasks: Sequence[Task], free: dict[str, int]) -> None:
        """Hand out the next batches of each device key whose grants are nearly used up."""
        self._sync(tasks)
        for key in self.spec.device_keys:
            mine = [t for t in tasks if t.key == key]
            outstanding = sum(max(0, self.limit(t) - t.done_trials) for t in mine)
            while outstanding < max(self.spec.batch_size, free.get(key, 0)):
                nxt = self.sched.next_batch(key)
                if nxt is None:
                    break
                outstanding += nxt[1]

    def _sync(self, tasks: Sequence[Task]) -> None:
        """Tasks that can take no more (their tuner is done, they starved or failed) give back what they
        were granted and did not start."""
        for t in tasks:
            i = self.ids[id(t)]
            if self.sched.alive(i) and (t.error or (not t.in_flight and t.tuner is not None and t.tuner.done)):
                self.sched.close(i)
            if not self.sched.alive(i):
                self.sched.release(i, self.limit(t) - t.done_trials - t.in_flight)

    def observe(self, t: Task, result: MeasureResult) -> None:
        # A trial the farm lost (no device) is not the kernel's failure: it does not count toward starving.
        self._observe(t, result.median_s if result.ok else None, result.outcome is not Outcome.DEVICE_LOST, False)

    def _observe(self, t: Task, latency: float | None, failed: bool, resumed: bool) -> None:
        self.sched.observe(self.ids[id(t)], latency, failed=failed, resumed=resumed)
        est = self.sched.weighted_latency(t.key)
        if est is not None:
            spent = sum(x.trials for x in self.sched.tasks if x.key == t.key)
            self.curves[t.key].append((spent, est))

    def finished(self, t: Task) -> bool:
        """``t`` will get no more trials: it starved or closed, or its key's budget is all handed out
        and it used its share."""
        i = self.ids[id(t)]
        return not self.sched.alive(i) or (self.sched.remaining(t.key) == 0 and self.limit(t) <= t.done_trials)

    def starved(self, t: Task) -> bool:
        return self.sched.tasks[self.ids[id(t)]].starved

    def note(self, t: Task) -> str:
        """Why a task without a correct result got no more trials ("" if it has one)."""
        if t.best_s is not None:
            return ""
        if self.starved(t):
            return "starved: every trial failed, the scheduler gave it no more"
        return "no trials: its device key's trials_total ran out first" if t.done_trials == 0 else ""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sched = self.sched
        for key in self.spec.device_keys:
            out[key] = {
                "budget": sched.budgets[key], "spent": sched.spent(key), "policy": sched.policy,
                "grants": [[self.names[i], n, why] for i, n, why in sched.grants if sched.tasks[i].key == key],
                "starved": [self.names[i] for i, x in enumerate(self.sched.tasks) if x.key == key and x.starved],
                "estimated_latency": [[n, s] for n, s in self.curves[key]],
            }
        return out
