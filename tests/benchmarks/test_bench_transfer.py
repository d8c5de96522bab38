"""benchmarks/bench_transfer.py: trials to 95%, source records that map (and those that don't), ranking only."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from devices.fingerprint import cpu_fingerprint
from farm.log import LogRecord, LogWriter
from farm.records.measure import MeasureResult, Outcome
from farm.target import Target
from farm.tuning.model import TuneContext
from farm.tuning.search import make_tuner
from farm.workloads.registry import get_workload

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_transfer as bt  # noqa: E402

SKX = str(Target.parse("llvm -mcpu=skylake-avx512").with_isa_features())  # 16 lanes
HASWELL = str(Target.parse("llvm -mcpu=haswell").with_isa_features())  # 8 lanes
SHAPE = (64, 64, 64)
ZEN4 = {"cpu_name": "znver4", "cores": 2, "isa": "x86_64"}


def _record(nr: int, gflops: float, key: str = "cpu-dev-2t", shape: tuple[int, ...] = SHAPE) -> LogRecord:
    """A matmul record measured on another machine for a 16-lane target, NR columns per micro-tile."""
    space = get_workload("matmul").space(shape, SKX)
    cfg = space.from_json({"knobs": {"tile_j": [-1, 1, nr]}})
    res = MeasureResult(Outcome.OK, (1e-3,), "", gflops * 1e6, 1)
    return LogRecord.from_measurement(workload="matmul", args=shape, target=SKX, config=cfg, result=res,
                                      device_key=key, fingerprint=ZEN4)


def test_trials_to_95_counts_in_order_and_never_is_budget_plus_one() -> None:
    assert bt.trials_to([1.0, 5.0, 3.0, 9.6, 2.0], 9.5, 5) == 4
    assert bt.trials_to([1.0, 5.0], 9.5, 64) == 65
    runs = {"cold": {0: {"gflops": [1.0] * 9 + [10.0], "expert": [], "seconds": 1.0},
                     1: {"gflops": [1.0, 9.0], "expert": [], "seconds": 1.0}},
            "transfer": {0: {"gflops": [1.0, 10.0], "expert": ["default", "transfer"], "seconds": 2.0},
                         1: {"gflops": [1.0, 2.0, 9.5], "expert": ["default", "estimate", "transfer"],
                             "seconds": 2.0}}}
    s = bt.summarize(runs, trials=10)
    assert s["best_gflops"] == 10.0  # the best of any run, either mode
    assert s["cold"]["trials_to_95"] == [10, 11] and s["cold"]["never"] == 1 and s["cold"]["worst"] == 11
    assert s["transfer"]["trials_to_95"] == [2, 3] and s["transfer_over_cold"] == round(2.5 / 10.5, 3)
    assert s["cold_within_first_batch"] == 0  # trial 10 is past the default and one batch of 8
    assert s["transfer_share_per_batch"] == [0.75]


def test_source_records_map_by_knob_values_or_are_skipped(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "src.jsonl") as w:  # 64 columns = 4 x 16 lanes: no such option for 8 lanes
        w.append([_record(16, 50.0), _record(64, 90.0), dataclasses.replace(_record(32, 70.0), knobs={})])
    kept, counts = bt.load_sources(("src.jsonl",), HASWELL, data=tmp_path)
    assert counts["src.jsonl"] == {"mapped": 1, "skipped": 2, "measured_on": ["znver4"]}
    assert [r.knobs["tile_j"][-1] for r in kept] == [16] and kept[0].target == SKX  # handed on unchanged
    kept, counts = bt.load_sources(("src.jsonl",), SKX, data=tmp_path)
    assert counts["src.jsonl"]["mapped"] == 2


def test_a_source_under_the_benchmarks_device_key_is_refused(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "src.jsonl") as w:
        w.append([_record(16, 50.0, key=bt.KEY)])
    with pytest.raises(ValueError, match="device key"):
        bt.load_sources(("src.jsonl",), SKX, data=tmp_path)


def test_mapped_source_records_rank_but_are_never_this_tasks_results() -> None:
    """What the benchmark relies on: another device's records (other key) go to the transfer expert only."""
    here = str(Target.host())
    ctx = TuneContext("matmul", SHAPE, here, bt.KEY, cpu_fingerprint(probe=False))
    tuner: Any = make_tuner("xgb", get_workload("matmul").space(SHAPE, here), seed=0, context=ctx)
    src = [_record(nr, g) for nr, g in ((16, 50.0), (32, 70.0))] + [_record(16, 40.0, shape=(48, 64, 64))]
    assert tuner.load_history(src) == 0
    assert tuner.trials == 0 and not tuner.results and tuner.best_gflops == 0.0
    assert len(tuner.propose(4)) == 4 and tuner.union.trained  # the transfer expert ranked


@pytest.mark.parametrize("argv, msg", [(["--tasks", "matmul,nope"], "unknown task(s) nope"),
                                       (["--trials", "8"], "more than one batch"),
                                       (["--seeds", "0"], "--seeds must be >= 1"),
                                       (["--target", "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"],
                                        "does not run on this host"),
                                       (["--target", "llvm -mcpu"], "must look like -name=value")])
def test_bad_arguments_are_refused(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bt.main(argv) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.ray
def test_a_tiny_live_run_prints_the_figures(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Both modes tune live (embedded farm, local Ray) on a small matmul with a real source of another shape."""
    monkeypatch.setitem(bt.TASKS, "matmul", bt.TaskDef("matmul", SHAPE, ("matmul_384x384x384_2t.jsonl.gz",)))
    assert bt.main(["--tasks", "matmul", "--trials", "10", "--seeds", "1", "--json"]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    for key in ("transfer_over_cold_trials_to_95", "transfer_over_cold_worst", "cold_worst_trials_to_95"):
        assert figures[key] is not None, key
    mm = figures["per_task"]["matmul"]
    assert mm["sources"]["matmul_384x384x384_2t.jsonl.gz"]["mapped"] > 0
    assert all(len(g) == 10 for m in figures["gflops_per_trial"]["matmul"].values() for g in m.values())
    for m in ("cold", "transfer"):
        configs = figures["configs_per_trial"]["matmul"][m]["0"]
        assert configs[0] == 0 and len(set(configs)) == 10  # the default first, then nine distinct proposals
        assert len(mm[m]["loadavg_1m"][0]) == 2
    assert "never" in out or "transfer/cold" in out


def test_retime_times_only_configs_near_the_best_and_counts_the_rest_as_zero() -> None:
    """Re-timing builds and times, side by side on a real embedded farm's device server, every config
    some run timed at >= the floor x the best."""
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    task = bt.TaskDef("matmul", SHAPE, ())
    runs = {"cold": {0: {"configs": [0, 5, 9], "gflops": [10.0, 100.0, 59.0]}},
            "transfer": {0: {"configs": [0, 7], "gflops": [10.0, 61.0]}}}
    with EmbeddedFarm(key=bt.KEY) as farm, connect(farm.address, token=farm.token) as session:
        worth = bt.retime(session, task, runs, session.target(bt.KEY), rounds=2)
    assert sorted(worth) == [5, 7]  # 59 < 0.6 x 100: not near the best, not re-timed
    assert all(g > 0 for g in worth.values())


def test_avx512_sources_map_partly_onto_an_avx2_target() -> None:
    """The committed sources were measured with AVX-512 (16 lanes): on AVX2 code (8 lanes, 16 registers)
    the knob values the narrower space does not offer are skipped, the rest rank."""
    haswell = str(Target.parse("llvm -mcpu=haswell").with_isa_features())
    kept, counts = bt.load_sources(("matmul_384x384x384_2t.jsonl.gz",), haswell)
    c = counts["matmul_384x384x384_2t.jsonl.gz"]
    assert c["mapped"] == len(kept) > 0 and c["skipped"] > 0 and c["measured_on"] == ["znver4"]
