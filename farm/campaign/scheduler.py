"""Which task gets the next batch of trials: a plain object, free of I/O (unit-tested without a farm).

A campaign with ``trials_total`` has one budget per device key, shared by the key's tasks. The
scheduler hands that budget out one batch at a time. First a warm-up: every task gets a small
batch, round-robin, so each has a latency. Then each batch goes to the task with the largest
estimated gradient of the weighted end-to-end latency ``f = sum_i w_i * g_i`` with respect to
trials, as Ansor's task scheduler does (Zheng et al., OSDI 2020, section 6)::

    df/dt_i ~= w_i * (alpha * backward_i + (1 - alpha) * forward_i)

* ``backward_i``: the recent improvement rate, the drop of task i's best latency ``g_i`` over its
  last ``window`` batches, per batch;
* ``forward_i``: an optimistic guess of the next batch's drop, the larger of ``g_i / t_i`` (the
  latency could fall to zero at the rate it fell so far, ``t_i`` in batches) and
  ``g_i - beta * C_i / V`` (the task could run at ``1/beta`` of the best throughput ``V`` any
  similar task reached: the same operator, another shape, on the same device key; the shared log's
  records count). Here both terms are drops (positive): the paper writes them as negative slopes.

``round_robin`` is the control: after the same warm-up, the task with the fewest trials next.

A task whose trials keep failing (``starve_after`` in a row: it fails to build, crashes, or computes
wrong answers) is starved: it gets no more batches. A task without any correct result yet is served
before the others (it has no latency to weigh), until it succeeds or starves. Resuming replays the
log's trials into the scheduler (``observe(..., resumed=True)``): what was spent stays spent, and a
task past its warm-up is not warmed up again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

POLICIES = ("gradient", "round_robin")


@dataclass
class SchedTask:
    """What the scheduler knows of one task."""

    key: str  # the device key whose budget it spends
    weight: float  # occurrences in the network(s): the weight of its latency in the end-to-end sum
    flops: float  # per call (C_i)
    group: str  # similar tasks share a group: the operator
    granted: int = 0  # trials handed out (measured, in flight, or resumed from the log)
    trials: int = 0  # trials measured
    best_s: float | None = None
    curve: list[float | None] = field(default_factory=list)  # best latency after each trial (None: no OK yet)
    fails_in_row: int = 0
    starved: bool = False
    closed: bool = False  # its tuner has nothing left to propose
    allocations: list[int] = field(default_factory=list)  # the batch sizes granted, in order


class TaskScheduler:
    """Allocates each device key's ``budgets[key]`` trials among its tasks, one batch at a time."""

    def __init__(self, budgets: dict[str, int], *, batch: int, warmup: int, policy: str = "gradient",
                 alpha: float = 0.2, beta: float = 2.0, window: int = 3, starve_after: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if batch < 1 or warmup < 1:
            raise ValueError(f"batch and warmup must be >= 1, got {batch} and {warmup}")
        self.budgets = dict(budgets)
        self.batch, self.warmup, self.policy = batch, warmup, policy
        self.alpha, self.beta, self.window = alpha, beta, window
        self.starve_after = starve_after if starve_after is not None else warmup + batch
        self.tasks: list[SchedTask] = []
        self._similar: dict[tuple[str, str], float] = {}  # (key, group) -> best GFLOPS of another shape
        self.grants: list[tuple[int, int, str]] = []  # (task, trials, why) per grant: "warm-up" | "gradient" | ...

    # --- what the driver tells it ------------------------------------------------------------------
    def add_task(self, key: str, weight: float, flops: float, group: str) -> int:
        if key not in self.budgets:
            raise ValueError(f"no budget for device key {key!r}")
        self.tasks.append(SchedTask(key, float(weight), float(flops), group))
        return len(self.tasks) - 1

    def note_similar(self, key: str, group: str, gflops: float) -> None:
        """A throughput some task of ``group`` reached on ``key`` (e.g. another shape, in the shared log)."""
        if gflops > self._similar.get((key, group), 0.0):
            self._similar[(key, group)] = gflops

    def observe(self, task: int, latency_s: float | None, *, failed: bool = True, resumed: bool = False) -> None:
        """One measured trial of ``task``: its latency, or None when it did not run correctly.
        ``failed=False`` for a trial lost to the farm (no device), which is not the kernel's fault.
        ``resumed``: a trial from the log, spent before this run (it was never granted here)."""
        t = self.tasks[task]
        t.trials += 1
        if resumed:
            t.granted += 1
        if latency_s is not None and latency_s > 0:
            t.fails_in_row = 0
            if t.best_s is None or latency_s < t.best_s:
                t.best_s = latency_s
                if t.flops > 0:
                    self.note_similar(t.key, t.group, t.flops / latency_s / 1e9)
        elif failed:
            t.fails_in_row += 1
            if t.fails_in_row >= self.starve_after:
                t.starved = True
        t.curve.append(t.best_s)

    def release(self, task: int, trials: int) -> None:
        """Trials granted to ``task`` that it will not use (its tuner ran out): back to the key's budget."""
        t = self.tasks[task]
        t.granted -= max(0, min(trials, t.granted - t.trials))

    def close(self, task: int) -> None:
        """``task`` can use no more trials (its tuner is done, or it cannot run at all)."""
        self.tasks[task].closed = True

    # --- what it answers ---------------------------------------------------------------------------
    def spent(self, key: str) -> int:
        return sum(t.granted for t in self.tasks if t.key == key)

    def remaining(self, key: str) -> int:
        return max(0, self.budgets[key] - self.spent(key))

    def alive(self, task: int) -> bool:
        t = self.tasks[task]
        return not (t.starved or t.closed)

    def exhausted(self, key: str) -> bool:
        """Nothing more will be granted on ``key``: its budget is spent or none of its tasks can use it."""
        return self.remaining(key) == 0 or not any(self.alive(i) for i, t in enumerate(self.tasks) if t.key == key)

    def next_batch(self, key: str) -> tuple[int, int] | None:
        """(task, trials) for ``key``'s next batch, already counted as spent; None when nothing is left,
        or nothing can be weighed until results come in."""
        left = self.remaining(key)
        mine = [i for i, t in enumerate(self.tasks) if t.key == key and self.alive(i)]
        if left == 0 or not mine:
            return None
        cold = [i for i in mine if self.tasks[i].granted < self.warmup]
        if cold:  # warm-up, round-robin in order: each task gets its first trials
            i = min(cold, key=lambda j: (self.tasks[j].granted, j))
            return self._grant(i, min(self.warmup - self.tasks[i].granted, left), "warm-up")
        # A task without a latency yet whose trials are still out is not weighed until they are in.
        mine = [i for i in mine if self.tasks[i].best_s is not None or self.tasks[i].trials >= self.tasks[i].granted]
        if not mine:
            return None
        failing = [i for i in mine if self.tasks[i].best_s is None]
        if failing:  # no latency to weigh yet: one more chance each, until it succeeds or starves
            i = min(failing, key=lambda j: (self.tasks[j].granted, j))
            return self._grant(i, min(self.batch, left), "no result yet")
        if self.policy == "round_robin":
            i = min(mine, key=lambda j: (self.tasks[j].granted, j))
            return self._grant(i, min(self.batch, left), "round-robin")
        grads = {i: self.gradient(i) for i in mine}
        i = max(mine, key=lambda j: (grads[j], -self.tasks[j].granted, -j))
        return self._grant(i, min(self.batch, left), "gradient")

    def gradient(self, task: int) -> float:
        """The estimated drop of the weighted end-to-end latency per batch given to ``task`` (seconds)."""
        t = self.tasks[task]
        g = t.best_s
        if g is None:
            return math.inf
        return t.weight * (self.alpha * self._backward(t) + (1.0 - self.alpha) * self._forward(t))

    def _backward(self, t: SchedTask) -> float:
        """The drop of the best latency over the last ``window`` batches after the warm-up (fewer trials
        when that is all there is), per batch. The warm-up's own drop is left out: it starts from the
        template default, whose slowness says little about what more trials will find."""
        n = len(t.curve)
        span = min(self.window * self.batch, n - self.warmup)
        if span < 1:
            return 0.0
        now, then = t.curve[-1], t.curve[n - 1 - span]
        if now is None:
            return 0.0
        if then is None:  # the first correct result came inside the window: measure from it
            then = next(c for c in t.curve if c is not None)
        return max(0.0, then - now) / span * self.batch

    def _forward(self, t: SchedTask) -> float:
        g = t.best_s
        assert g is not None
        rounds = max(1.0, t.trials / self.batch)
        drop = g / rounds  # the latency could reach zero at the rate it fell so far
        best = self._similar.get((t.key, t.group), 0.0)
        if best > 0 and t.flops > 0:
            # ...or run at 1/beta of the best throughput a similar task reached
            drop = max(drop, g - self.beta * t.flops / (best * 1e9))
        return drop

    def _grant(self, task: int, n: int, why: str) -> tuple[int, int]:
        t = self.tasks[task]
        t.granted += n
        t.allocations.append(n)
        self.grants.append((task, n, why))
        return task, n

    def weighted_latency(self, key: str) -> float | None:
        """sum of weight x best latency over ``key``'s tasks; None until every task has a latency."""
        mine = [t for t in self.tasks if t.key == key and not t.starved]
        if not mine or any(t.best_s is None for t in mine):
            return None
        return sum(t.weight * (t.best_s or 0.0) for t in mine)
