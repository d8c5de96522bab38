"""Pieces of the campaign driver, without Ray or a farm: idle meter, background tuner, record sinks."""
from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest

from farm.campaign.idle import IdleMeter, idle_fraction
from farm.campaign.proposer import BackgroundTuner
from farm.campaign.sinks import FileSink, TrackerSink
from farm.log import LogRecord, load_log
from farm.records.measure import Outcome
from rpc.errors import ConnectionLost


def summary(*devs: tuple[str, str, float]) -> dict[str, Any]:
    return {"devices": [{"device_id": d, "key": k, "busy_s": b, "capacity": 1} for d, k, b in devs]}


def test_idle_meter_from_cumulative_busy_counters() -> None:
    m = IdleMeter(["local"])
    m.sample(0.0, summary(("d1", "local", 10.0), ("x", "other", 0.0)))
    m.sample(2.0, summary(("d1", "local", 11.0), ("x", "other", 2.0)))  # 1 s busy of 2: other keys ignored
    m.sample(3.0, {})  # no summary (tracker away): skipped, the next sample covers the gap
    m.sample(4.0, summary(("d1", "local", 13.0), ("d2", "local", 0.0)))  # d2 joined: counts from its next pair
    m.sample(6.0, summary(("d1", "local", 15.0), ("d2", "local", 0.5)))
    assert m.fraction(0.0, 2.0) == pytest.approx(0.5)
    assert m.fraction(2.0, 4.0) == pytest.approx(0.0)
    assert m.fraction(4.0, 6.0) == pytest.approx(1 - 2.5 / 4)
    assert m.fraction() == pytest.approx(1 - 5.5 / 8)
    assert idle_fraction(m.timeline, 5.0, 5.5) is None  # no two samples in the window: unknown, not 0
    assert IdleMeter(["local"]).fraction() is None


class SlowTuner:
    """A tuner whose proposals wait for a signal; fails the test if touched by two threads at once."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.inside = threading.Lock()
        self.observed: list[tuple[int, float]] = []
        self.visited: set[int] = set()
        self.next = 0

    def propose(self, n: int) -> list[int]:
        assert self.inside.acquire(blocking=False), "propose while observing"
        try:
            assert self.go.wait(10)
            picks = list(range(self.next, self.next + n))
            self.next += n
            return picks
        finally:
            self.inside.release()

    def observe(self, results: list[tuple[int, float]]) -> None:
        assert self.inside.acquire(blocking=False), "observe during a proposal"
        self.observed.extend(results)
        self.inside.release()

    @property
    def done(self) -> bool:
        return self.next >= 6


def test_background_tuner_never_shares_the_tuner_between_threads() -> None:
    inner = SlowTuner()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t = BackgroundTuner(inner, pool)
        assert t.propose(3) == [] and t.busy
        t.observe([(100, 1.0)])  # arrives mid-proposal: kept back
        assert inner.observed == [] and not t.done
        assert t.propose(3) == []  # still running: nothing yet, no second proposal
        inner.go.set()
        picks: list[int] = []
        for _ in range(1000):
            picks = t.propose(3)
            if picks:
                break
            threading.Event().wait(0.01)
        assert picks == [0, 1, 2] and inner.observed == [(100, 1.0)] and not t.busy
        t.observe([(0, 2.0)])  # idle: applied at once
        assert inner.observed[-1] == (0, 2.0)
        t.propose(3)
        pool.submit(lambda: None).result()  # the worker is single: the proposal has finished
        assert t.propose(3) == [3, 4, 5] and t.done
        assert t.visited is inner.visited  # the rest of the tuner's interface passes through


def record(i: int) -> LogRecord:
    return LogRecord("matmul", (8, 8, 8), "llvm", "local", i, {}, Outcome.OK, (1e-3,), gflops=float(i))


class FlakySession:
    def __init__(self) -> None:
        self.up = True
        self.log: list[dict[str, Any]] = []

    def log_append(self, records: list[LogRecord]) -> int:
        if not self.up:
            raise ConnectionLost("tracker gone")
        self.log.extend(r.to_json() for r in records)
        return len(records)

    def log_query(self, kind: str, **kw: Any) -> Any:
        assert kind == "history"
        return {"local": [LogRecord.from_json(d) for d in self.log if d["workload"]["name"] == kw["workload"]]}


def test_tracker_sink_keeps_records_through_an_outage_and_spills_what_never_went(tmp_path: Path) -> None:
    sessions = [FlakySession()]
    sink = TrackerSink(lambda: sessions[-1], ["matmul", "matmul"], spill=tmp_path / "unsent.jsonl")
    with sink.open() as w:
        assert w.append([record(0)]) == 1
        sessions[-1].up = False
        assert w.append([record(1)]) == 0 and len(sink.unsent) == 1  # kept back, not lost
        sessions.append(FlakySession())  # the driver re-dialled: the sink follows the new session
        sessions[-1].log = list(sessions[0].log)
        assert w.append([record(2)]) == 2
    assert [r.config_index for r in sink.load()] == [0, 1, 2]
    assert not (tmp_path / "unsent.jsonl").exists()
    with sink.open() as w:
        sessions[-1].up = False
        w.append([record(3)])
    assert [r.config_index for r in load_log(tmp_path / "unsent.jsonl").records] == [3]


def test_file_sink_loads_what_it_wrote(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "sub" / "c.jsonl")
    assert sink.load() == []
    with sink.open() as w:
        w.append([record(0), record(1)])
    assert [r.config_index for r in sink.load()] == [0, 1]
