"""The tracker keeps the farm's shared log: `farm tracker --log PATH`, `log_append`, `log_query`.

A real tracker process on 127.0.0.1 (port 0); clients are `farm.connect` sessions.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from farm.client.session import Session
from farm.log import LogRecord, load_log
from farm.records.measure import Outcome
from rpc.client import Client
from rpc.errors import BadRequest
from tests.rpc.harness import LocalFarm


def rec(i: int, gflops: float, *, key: str = "local", wl: str = "matmul", args: tuple[int, ...] = (64, 64, 64),
        outcome: Outcome = Outcome.OK) -> LogRecord:
    return LogRecord(wl, args, "llvm", key, i, {"tile": i}, outcome, (1e-3,) if outcome is Outcome.OK else (),
                     gflops=gflops, campaign="t", task=f"{wl}@{key}")


@pytest.fixture
def farm_with_log(tmp_path: Path):  # type: ignore[no-untyped-def]
    farm = LocalFarm(tmp_path / "farm")
    log = tmp_path / "shared.jsonl"
    farm.start_tracker(0, "--log", str(log))
    try:
        yield farm, log
    finally:
        leaked = farm.close()
    assert not leaked


def session(farm: LocalFarm) -> Session:
    return Session(farm.client())


def test_append_then_every_query_kind(farm_with_log) -> None:  # type: ignore[no-untyped-def]
    farm, log = farm_with_log
    s = session(farm)
    batch = [rec(0, 5.0), rec(1, 9.0), rec(2, 0.0, outcome=Outcome.WRONG_ANSWER), rec(3, 7.0, key="rpi4"),
             rec(4, 3.0, wl="conv2d", args=(1, 8, 8, 8, 8, 3, 1, 1)), rec(5, 11.0, args=(128, 128, 128))]
    assert s.log_append(batch) == 6
    # durable in the file, in order, before the reply came
    on_disk = load_log(log).records
    assert [r.config_index for r in on_disk] == [0, 1, 2, 3, 4, 5]

    best = s.log_query("best", workload="matmul(64,64,64)", device="local")
    assert best is not None and best.config_index == 1 and best.gflops == 9.0
    assert s.log_query("best", workload="matmul").config_index == 5  # any shape
    assert s.log_query("best", workload="nosuch") is None
    assert [r.config_index for r in s.log_query("top_k", workload="matmul", k=3)] == [5, 1, 3]
    hist = s.log_query("history", workload="matmul", args=[64, 64, 64])
    assert sorted(hist) == ["local", "rpi4"] and [r.config_index for r in hist["local"]] == [0, 1, 2]
    assert s.log_query("measured", workload="matmul", device="local", args=[64, 64, 64]) == {0, 1, 2}
    everything = s.log_query("records")
    assert [r.to_json() for r in everything] == [r.to_json() for r in on_disk]


def test_malformed_records_refuse_the_whole_batch(farm_with_log) -> None:  # type: ignore[no-untyped-def]
    farm, log = farm_with_log
    s = session(farm)
    s.log_append([rec(0, 1.0)])
    good = rec(1, 2.0).to_json()
    for bad in ({"v": 1}, "not an object", {**good, "result": {"outcome": "MAYBE"}}, {**good, "v": 99}):
        with pytest.raises(BadRequest, match=r"records\[1\]"):  # the field named
            s.client.call("log_append", records=[good, bad])
    with pytest.raises(BadRequest):
        s.client.call("log_append", records="nope")
    for bad_query in ({"kind": "bogus"}, {"kind": "best", "args": ["x"]}, {"kind": "history"},
                      {"kind": "measured", "workload": "matmul"}, {"kind": "top_k", "k": -1}):
        with pytest.raises(BadRequest):
            s.client.call("log_query", **bad_query)
    assert [r.config_index for r in load_log(log).records] == [0], "nothing of a refused batch is written"
    assert s.client.summary()["devices"] == []  # the connection survived the refusals


def test_log_survives_a_tracker_restart_and_has_one_writer(tmp_path: Path) -> None:
    log = tmp_path / "shared.jsonl"
    farm = LocalFarm(tmp_path / "a")
    try:
        farm.start_tracker(0, "--log", str(log))
        Session(farm.client()).log_append([rec(0, 1.0), rec(1, 2.0)])
        # a second tracker on the same file is refused: one writer per log
        r = subprocess.run([sys.executable, "-m", "rpc.cli", "tracker", "--port", "0", "--log", str(log)],
                           env=farm.env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "another writer holds this log" in r.stderr, r.stderr
    finally:
        assert not farm.close()
    with log.open("a") as fh:
        fh.write('{"v": 1, "workload": {"na')  # a torn last line from a writer killed mid-write
    farm = LocalFarm(tmp_path / "b")
    try:
        farm.start_tracker(0, "--log", str(log))
        s = Session(farm.client())
        assert [r.config_index for r in s.log_query("records")] == [0, 1]
        s.log_append([rec(2, 3.0)])
        assert s.log_query("best", workload="matmul").config_index == 2
    finally:
        assert not farm.close()
    loaded = load_log(log)
    assert [r.config_index for r in loaded.records] == [0, 1, 2] and len(loaded.skipped) == 1


def test_plain_tracker_has_no_log_ops(tmp_path: Path) -> None:
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start_tracker()
        c: Client = farm.client()
        with pytest.raises(BadRequest, match="unknown op"):
            c.call("log_query", kind="best")
    finally:
        assert not farm.close()


def test_rpc_imports_no_farm_ray_or_numpy() -> None:
    # rpc may use farm's records (Outcome, the wire's field rules) and errors: standard library only.
    code = ("import sys, rpc.cli, rpc.tracker, rpc.ray_tracker, rpc.logservice;"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('farm', 'ray', 'numpy', 'llvmlite')"
            " and m not in ('farm', 'farm.errors') and not m.startswith('farm.records'))))")
    r = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_ray_tracker_needs_a_fixed_port(tmp_path: Path) -> None:
    # Checked before Ray is touched: devices must find a restarted actor at the same address.
    farm = LocalFarm(tmp_path / "farm")
    r = subprocess.run([sys.executable, "-m", "rpc.cli", "tracker", "--ray", "--port", "0"], env=farm.env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "needs a fixed --port" in r.stderr, r.stderr[-2000:]
