"""The task scheduler as a plain object (farm/campaign/scheduler.py): no farm, no Ray.

Tasks are simulated: a task's best latency after t trials follows a curve that falls from its
start toward a floor, so every allocation decision is the scheduler's alone and deterministic.
"""
from __future__ import annotations

import math

import pytest

from farm.campaign.scheduler import TaskScheduler


def latency(start: float, floor: float, t: int, tau: float = 12.0) -> float:
    """Best latency after t trials: start (the template default) falling toward floor."""
    return floor + (start - floor) * math.exp(-t / tau)


def run(s: TaskScheduler, key: str, model: dict[int, tuple[float, float]], fail: set[int] = frozenset()) -> None:
    """Grant and 'measure' batches until the key's budget is spent (one batch at a time)."""
    while (nxt := s.next_batch(key)) is not None:
        i, n = nxt
        for _ in range(n):
            t = s.tasks[i].trials
            s.observe(i, None if i in fail else latency(*model[i], t))


def shares(s: TaskScheduler, after: int = 0) -> list[int]:
    """Trials granted per task, counting grants from the ``after``-th on."""
    out = [0] * len(s.tasks)
    for i, n, _ in s.grants[after:]:
        out[i] += n
    return out


def two_tasks(w0: float, w1: float, **kw: object) -> TaskScheduler:
    s = TaskScheduler({"x86": 64}, batch=8, warmup=4, **kw)  # type: ignore[arg-type]
    s.add_task("x86", w0, 1e9, "matmul")
    s.add_task("x86", w1, 1e9, "matmul")
    return s


MODEL = {0: (10e-3, 2e-3), 1: (10e-3, 2e-3)}  # two identical tasks


def test_warm_up_is_round_robin_then_the_weight_decides() -> None:
    s = two_tasks(10, 1)
    run(s, "x86", MODEL)
    assert s.grants[:2] == [(0, 4, "warm-up"), (1, 4, "warm-up")]
    after = shares(s, 2)
    # Pass: the task with ten times the weight gets at least 6 of the 7 batches after the warm-up.
    assert after[0] >= 48 and sum(after) == 56, s.grants
    assert s.spent("x86") == 64 and s.remaining("x86") == 0


def test_equal_weights_share_the_budget() -> None:
    """The control: the same two tasks with equal weights split what follows the warm-up."""
    s = two_tasks(1, 1)
    run(s, "x86", MODEL)
    after = shares(s, 2)
    # Pass: neither task gets more than 5 of the 7 batches (the 10x case gives one at least 6).
    assert max(after) <= 40 and min(after) >= 16, s.grants


def test_round_robin_ignores_the_weights() -> None:
    s = two_tasks(10, 1, policy="round_robin")
    run(s, "x86", MODEL)
    after = shares(s, 2)
    assert abs(after[0] - after[1]) <= 8, s.grants


def test_gradient_prefers_the_slow_heavy_task() -> None:
    s = TaskScheduler({"k": 1000}, batch=8, warmup=4)
    a = s.add_task("k", 1, 1e9, "conv2d")
    b = s.add_task("k", 4, 1e9, "conv2d")
    for _ in range(4):
        s.observe(a, 20e-3, resumed=True)  # 20 ms x 1
        s.observe(b, 3e-3, resumed=True)  # 3 ms x 4 = 12 ms
    assert s.gradient(a) > s.gradient(b)
    assert s.next_batch("k") == (a, 8)


def test_similar_tasks_bound_the_forward_guess() -> None:
    """A task far below the throughput a similar task reached has more to gain (Ansor's beta term)."""
    s = TaskScheduler({"k": 1000}, batch=8, warmup=4)
    a = s.add_task("k", 1, 2e9, "conv2d")  # 2 GFLOP
    b = s.add_task("k", 1, 2e9, "depthwise_conv2d")
    for _ in range(40):
        s.observe(a, 0.2, resumed=True)  # 10 GFLOPS each, after many trials
        s.observe(b, 0.2, resumed=True)
    s.note_similar("k", "conv2d", 100.0)  # another conv2d shape reached 100 GFLOPS in the shared log
    assert s.gradient(a) > 2 * s.gradient(b)


def test_a_task_that_always_fails_is_starved() -> None:
    s = TaskScheduler({"k": 200}, batch=8, warmup=4)
    model = {0: (10e-3, 2e-3), 1: (10e-3, 2e-3)}
    s.add_task("k", 1, 1e9, "m")
    s.add_task("k", 100, 1e9, "m")  # its weight would win every batch if it ran
    run(s, "k", model, fail={1})
    assert s.tasks[1].starved
    # Pass: the failing task gets its warm-up and one more batch (starve_after = warm-up + batch), no more.
    assert s.tasks[1].granted == 12, s.grants
    assert s.tasks[0].granted == 188 and s.spent("k") == 200


def test_no_result_yet_waits_for_the_trials_out() -> None:
    s = TaskScheduler({"k": 100}, batch=8, warmup=4)
    a = s.add_task("k", 1, 1e9, "m")
    b = s.add_task("k", 1, 1e9, "m")
    assert s.next_batch("k") == (a, 4) and s.next_batch("k") == (b, 4)
    assert s.next_batch("k") is None  # nothing measured: nothing to weigh yet, nothing granted blindly
    for _ in range(4):
        s.observe(a, 1e-3)
    assert s.next_batch("k") == (a, 8)


def test_budgets_are_kept_per_device_key() -> None:
    s = TaskScheduler({"x86": 40, "rpi4": 24}, batch=8, warmup=4)
    for key in ("x86", "rpi4"):
        for w in (1, 3):
            s.add_task(key, w, 1e9, "matmul")
    model = {i: (10e-3 * (1 + i), 1e-3) for i in range(4)}
    run(s, "x86", model)
    run(s, "rpi4", model)
    assert s.spent("x86") == 40 and s.spent("rpi4") == 24
    assert sum(t.trials for t in s.tasks if t.key == "x86") == 40
    assert sum(t.trials for t in s.tasks if t.key == "rpi4") == 24


def test_resume_continues_the_allocation() -> None:
    """Replaying the log's trials (resumed=True) gives the same next grants as never stopping."""
    model = {0: (30e-3, 2e-3), 1: (10e-3, 1e-3), 2: (8e-3, 4e-3)}

    def fresh() -> TaskScheduler:
        s = TaskScheduler({"k": 96}, batch=8, warmup=4)
        for w in (1, 3, 2):
            s.add_task("k", w, 1e9, "conv2d")
        return s

    whole = fresh()
    run(whole, "k", model)
    first = fresh()  # the first run stops after the warm-up and 4 batches
    first.budgets["k"] = 44
    run(first, "k", model)
    resumed = fresh()
    for i, t in enumerate(first.tasks):
        for n in range(t.trials):
            resumed.observe(i, latency(*model[i], n), resumed=True)
    assert resumed.spent("k") == 44
    run(resumed, "k", model)
    assert all(why != "warm-up" for _, _, why in resumed.grants)  # no second warm-up
    assert [t.trials for t in resumed.tasks] == [t.trials for t in whole.tasks]


def test_release_and_close() -> None:
    s = TaskScheduler({"k": 32}, batch=8, warmup=4)
    a = s.add_task("k", 1, 1e9, "m")
    b = s.add_task("k", 1, 1e9, "m")
    s.next_batch("k")
    s.next_batch("k")
    s.observe(a, 1e-3)
    s.close(a)
    s.release(a, 3)  # its tuner ran out after one of its four
    assert s.spent("k") == 5 and not s.alive(a)
    for _ in range(4):
        s.observe(b, 1e-3)
    run(s, "k", {b: (1e-3, 1e-3)})
    assert s.tasks[b].granted == 31 and s.exhausted("k")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TaskScheduler({"k": 1}, batch=8, warmup=4, policy="greedy")
    s = TaskScheduler({"k": 1}, batch=8, warmup=4)
    with pytest.raises(ValueError):
        s.add_task("other", 1, 1, "m")
