"""`farm log best|show|export` on a small log."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.cli.main import main
from farm.log import write_log
from farm.records.measure import Outcome

from .conftest import make_record


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    p = tmp_path / "farm.jsonl"
    write_log(p, [make_record(0, 10.0, knobs={"tile_i": [-1, 4, 8], "order": 1}),
                  make_record(1, 40.0, knobs={"tile_i": [-1, 2, 8], "order": 0}),
                  make_record(2, 0.0, outcome=Outcome.COMPILE_ERROR, knobs={"tile_i": [-1, 1, 1], "order": 0}),
                  make_record(3, 90.0, device="dev-b", knobs={"tile_i": [-1, 8, 8], "order": 1}),
                  make_record(4, 70.0, args=(64, 64, 64), knobs={"tile_i": [-1, 8, 4], "order": 1})])
    return p


def test_best_json(small_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "best", str(small_log), "--workload", "matmul", "--device", "dev-a", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gflops"] == pytest.approx(70.0) and out["config"]["index"] == 4
    assert main(["log", "best", str(small_log), "--workload", "matmul(32,32,32)", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device_key"] == "dev-b"
    assert main(["log", "best", str(small_log), "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all("gflops" in r for r in rows)
    assert main(["log", "best", str(small_log), "--workload", "conv2d"]) == 1


def test_show_table(small_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "show", str(small_log)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["time", "workload", "device"] and len(lines) == 6
    assert "COMPILE_ERROR" in lines[3]
    assert main(["log", "show", str(small_log), "--ok", "--limit", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_export_tvm_records_parse(small_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "tvm.log"
    assert main(["log", "export", str(small_log), "--format", "tvm", "-o", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5
    for r in recs:
        assert set(r) == {"input", "config", "result", "version", "tvm_version"}
        target, task, args, kwargs = r["input"]
        assert target.startswith("llvm") and task == "matmul" and isinstance(args, list) and kwargs == {}
        assert set(r["config"]) == {"index", "code_hash", "entity"}
        assert all(len(e) == 3 for e in r["config"]["entity"])
        costs, error_no, all_cost, ts = r["result"]
        assert isinstance(costs, list) and isinstance(error_no, int) and all_cost >= 0 and ts > 0
        assert r["version"] == 0.2
    assert recs[0]["config"]["entity"][0] == ["tile_i", "sp", [-1, 4, 8]]
    assert recs[0]["config"]["entity"][1] == ["order", "ot", 1]
    assert recs[0]["result"][1] == 0 and recs[2]["result"][1] != 0
