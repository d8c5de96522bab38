"""Resume from a log measures no config twice; replay runs tuners on recorded data."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from farm.log import LogWriter, load_log, measured_indices
from farm.tuning.replay import ReplayError, ReplayOracle, run_replay
from farm.tuning.search import TuneContext, make_tuner

from .conftest import FP, TARGET, make_record, synthetic_speed

CTX = TuneContext("matmul", (32, 32, 32), TARGET, "dev-a", FP)
DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def _campaign(log_path: Path, space: Any, f: Any, name: str, rounds: int, seed: int, tear: bool = False) -> None:
    """What a campaign does: resume from its log, then propose/measure/append per round."""
    t = make_tuner(name, space, seed=seed, context=CTX, **({"sa_steps": 8, "n_chains": 16} if name == "xgb" else {}))
    t.load_history(load_log(log_path).records)
    with LogWriter(log_path) as w:
        for _ in range(rounds):
            idx = t.propose(8)
            recs = [make_record(i, f(i) or 1.0, knobs=space.get(i).to_json()["knobs"]) for i in idx]
            t.observe([(i, f(i)) for i in idx])
            w.append(recs)
    if tear:  # the process dies while writing: half a line at the end
        with open(log_path, "ab") as fh:
            fh.write(b'{"v": 1, "workload": {"name": "matmul", "ar')


@pytest.mark.parametrize("name", ["random", "ga", "xgb"])
def test_resume_measures_nothing_twice(name: str, tmp_path: Path, small_space: Any) -> None:
    p = tmp_path / "campaign.jsonl"
    f = synthetic_speed(small_space)
    _campaign(p, small_space, f, name, rounds=4, seed=0, tear=True)
    _campaign(p, small_space, f, name, rounds=3, seed=0)  # same seed: a naive tuner would repeat itself
    _campaign(p, small_space, f, name, rounds=3, seed=1)
    recs, skipped = load_log(p)
    assert len(skipped) == 1
    counts = Counter(r.config_index for r in recs)
    assert len(recs) == 80 and max(counts.values()) == 1
    assert measured_indices(recs, "matmul", "dev-a") == set(counts)


def _oracle(space: Any) -> ReplayOracle:
    f = synthetic_speed(space)
    return ReplayOracle([make_record(i, f(i) or 1.0, knobs=space.get(i).to_json()["knobs"])
                         for i in range(0, len(space), 97)])


def test_replay_oracle_and_run(small_space: Any) -> None:
    o = _oracle(small_space)
    assert o.context.workload == "matmul" and len(o) == len(o.pool)
    with pytest.raises(ReplayError, match="never measured"):
        o.measure([1])
    t = make_tuner("random", small_space, seed=0, context=o.context, pool=o.pool)
    run = run_replay(t, o, budget=len(o), batch=10)
    assert len(run.best_so_far) == len(o) and run.best_so_far[-1] == o.best_known
    assert run.trials_to(1.0) is not None and run.best_after(1) <= run.best_after(len(o))
    with pytest.raises(ReplayError, match="tasks"):
        ReplayOracle([make_record(0, 1.0), make_record(1, 1.0, device="other")])


def test_committed_datasets_load() -> None:
    files = sorted(DATA.glob("*.jsonl.gz"))
    if not files:
        pytest.skip("no replay dataset recorded yet")
    for p in files:
        recs, skipped = load_log(p)
        assert recs and not skipped, p
        o = ReplayOracle(recs, str(p))
        assert o.best_known > 0
