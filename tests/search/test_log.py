"""The shared log: round trips, torn lines, one writer, queries."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from farm.log import (
    LOG_SCHEMA_VERSION,
    LogError,
    LogRecord,
    LogWriter,
    best,
    best_per_task,
    history,
    load_log,
    measured_indices,
    top_k,
    write_log,
)
from farm.records.measure import Outcome

from .conftest import make_record


def test_record_round_trip() -> None:
    r = make_record(5, 42.0, knobs={"tile_i": [-1, 4, 8], "order": 1})
    d = r.to_json()
    assert d["v"] == LOG_SCHEMA_VERSION and d["result"]["outcome"] == "OK"
    assert LogRecord.from_json(json.loads(json.dumps(d))) == r
    assert r.gflops == pytest.approx(42.0)
    assert r.config == {"index": 5, "knobs": {"tile_i": [-1, 4, 8], "order": 1}}
    f = make_record(6, 1.0, outcome=Outcome.RUNTIME_ERROR)
    assert not f.ok and f.gflops == 0.0 and LogRecord.from_json(f.to_json()).outcome is Outcome.RUNTIME_ERROR


def test_log_cut_mid_line_loads_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "log.jsonl"
    write_log(p, [make_record(i, 10.0 + i) for i in range(5)])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])  # a writer killed mid-line
    with caplog.at_level(logging.WARNING, logger="farm.log"):
        recs, skipped = load_log(p)
    assert [r.config_index for r in recs] == [0, 1, 2, 3]
    assert len(skipped) == 1 and skipped[0].lineno == 5 and "torn" in skipped[0].reason
    assert f"{p}:5" in caplog.text

    # The next writer repairs the tail: the torn fragment stays one bad line, new records are intact.
    write_log(p, [make_record(9, 99.0)])
    recs, skipped = load_log(p)
    assert [r.config_index for r in recs] == [0, 1, 2, 3, 9]
    assert [s.lineno for s in skipped] == [5]


def test_malformed_and_future_lines_are_skipped_by_number(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    good = json.dumps(make_record(1, 5.0).to_json())
    future = dict(make_record(2, 5.0).to_json(), v=LOG_SCHEMA_VERSION + 1)
    p.write_text("\n".join([good, "{not json", json.dumps({"v": 1}), json.dumps(future), good]) + "\n")
    recs, skipped = load_log(p)
    assert len(recs) == 2
    assert [s.lineno for s in skipped] == [2, 3, 4]
    assert "newer" in skipped[2].reason


def test_one_writer_per_file(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    with LogWriter(p) as w:
        w.append([make_record(0, 1.0)])
        with pytest.raises(LogError, match="another writer"):
            LogWriter(p)
    with LogWriter(p) as w2:  # released on close
        assert w2.append([make_record(1, 2.0), make_record(2, 3.0)]) == 2
    assert len(load_log(p).records) == 3


def test_gzip_log_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl.gz"
    write_log(p, [make_record(0, 1.0)])
    write_log(p, [make_record(1, 2.0)])  # a second gzip member
    assert [r.config_index for r in load_log(p).records] == [0, 1]
    assert load_log(tmp_path / "none.jsonl") == ([], [])


def test_queries() -> None:
    recs = [make_record(i, g, device=d, args=a) for i, g, d, a in [
        (0, 10.0, "a", (32, 32, 32)), (1, 30.0, "a", (32, 32, 32)), (2, 20.0, "b", (32, 32, 32)),
        (1, 25.0, "a", (32, 32, 32)), (3, 50.0, "a", (64, 64, 64))]]
    recs.append(make_record(4, 1.0, device="a", outcome=Outcome.WRONG_ANSWER))
    assert best(recs).gflops == pytest.approx(50.0)
    assert best(recs, workload="matmul(32,32,32)").config_index == 1
    assert best(recs, workload="matmul", device="b").config_index == 2
    assert best(recs, workload="conv2d") is None
    per = best_per_task(recs)
    assert {k: v.config_index for k, v in per.items()} == {
        ("matmul", "", (32, 32, 32), "a"): 1, ("matmul", "", (32, 32, 32), "b"): 2,
        ("matmul", "", (64, 64, 64), "a"): 3}
    top = top_k(recs, 3, args=(32, 32, 32))
    assert [r.config_index for r in top] == [1, 2, 0]  # distinct configs, best measurement of each
    h = history(recs, "matmul", args=(32, 32, 32))
    assert sorted(h) == ["a", "b"] and len(h["a"]) == 4
    assert history(recs, "matmul", exclude_device="a").keys() == {"b"}
    assert measured_indices(recs, "matmul", "a", args=(32, 32, 32)) == {0, 1, 4}
