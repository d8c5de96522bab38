"""Bring your own kernel, as a user runs it: `farm tune` on the embedded farm with user kernels.

configs/campaigns/byok.yaml (four kernels from configs/kernels/: every record OK and checked),
and a campaign where one kernel is broken: the error names its file and line, the other kernel is
tuned, and `farm tune` exits 3.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.campaign.test_tune import farm, records

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_byok_campaign_every_record_ok_and_checked(tmp_path: Path) -> None:
    log = tmp_path / "byok.jsonl"
    r = farm("tune", str(ROOT / "configs/campaigns/byok.yaml"), "--trials", "6", "--log", str(log), "--json",
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {t["workload"] for t in summary["tasks"]} == {"rowsoftmax", "layernorm", "matmul_nt", "conv1d"}
    assert all(t["ok"] and t["checked"] == t["trials"] == 6 for t in summary["tasks"]), summary["tasks"]
    recs = records(log)
    assert len(recs) == 24
    assert all(x["result"]["outcome"] == "OK" and x["result"]["checked"] is True for x in recs)
    assert all(x["workload"]["hash"] for x in recs)  # user kernels: identified by their compute
    assert "checked" in r.stdout and "6/6" in r.stdout, r.stdout


def test_a_broken_kernel_is_reported_and_the_others_are_tuned(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "mine.py").write_text(textwrap.dedent('''
        from farm import compute, te, template

        @template("broken_tpl")
        def broken_tpl(cfg, n):
            A = te.placeholder((n,), name="A")
            raise RuntimeError("forgot to finish this template")

        @compute("fine_scale")
        def fine_scale(n):
            A = te.placeholder((n,), name="A")
            return [A, te.compute((n,), lambda i: A[i] * 2.0 + 1.0, name="B")]
    '''))
    log = tmp_path / "mixed.jsonl"
    (tmp_path / "mixed.yaml").write_text(
        f"name: mixed\nlog: {log}\ntuner: random\ntrials: 4\nbatch_size: 4\n"
        "timing: {repeat: 1, min_repeat_ms: 2, timeout_s: 10}\n"
        "workloads:\n  - {template: k/mine.py:broken_tpl, shape: [64]}\n"
        "  - {compute: k/mine.py:fine_scale, shape: [4096]}\n")
    r = farm("tune", str(tmp_path / "mixed.yaml"), "--json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    tasks = {t["workload"]: t for t in summary["tasks"]}
    assert not tasks["broken_tpl"]["ok"]
    err = tasks["broken_tpl"]["error"]
    assert "template broken_tpl" in err and "forgot to finish this template" in err and "mine.py:7" in err, err
    assert tasks["fine_scale"]["ok"] and tasks["fine_scale"]["trials"] == 4
    assert "FAILED" in r.stdout and "1 task(s) found no correct config" in r.stdout, r.stdout
    assert {x["workload"]["name"] for x in records(log)} == {"fine_scale"}


def test_a_shape_of_the_wrong_length_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nworkloads:\n  - {compute: ../configs/kernels/ops.py:layernorm, shape: [512]}\n")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "bad.yaml").write_text((tmp_path / "bad.yaml").read_text())
    r = farm("tune", str(sub / "bad.yaml"), cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.yaml:3" in r.stderr and "takes 2 shape values" in r.stderr, r.stderr
