"""bench_network's reading of the campaigns' end-to-end curves (the campaigns themselves are run by
the slow network-scheduler tests and by the benchmark)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_network  # noqa: E402


def test_latency_at_reads_the_curve_as_a_step_function() -> None:
    curve = [[48, 40.0], [56, 30.0], [120, 20.0]]
    assert bench_network.latency_at(curve, 40) is None  # not every task has a latency yet
    assert bench_network.latency_at(curve, 48) == 40.0
    assert bench_network.latency_at(curve, 119) == 30.0
    assert bench_network.latency_at(curve, 800) == 20.0


def test_ratio_by_budget_shows_the_lead_and_the_convergence() -> None:
    sched = [[48, 40.0], [100, 20.0], [400, 17.0]]
    rr = [[48, 28.0], [300, 19.0], [400, 17.0]]
    by = bench_network.ratio_by_budget(sched, rr, 400)
    assert by == {"0.25": round(20 / 28, 4), "0.5": round(20 / 28, 4), "0.75": round(20 / 19, 4), "1": 1.0}
    assert bench_network.ratio_by_budget(sched, rr, 160, (0.25,)) == {"0.25": None}  # 40 trials: too early
    assert bench_network._median([None, 0.8, 0.9, None, 1.0]) == 0.9 and bench_network._median([None]) is None
