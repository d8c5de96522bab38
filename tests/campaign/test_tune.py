"""`farm tune` as a user runs it: the embedded default, resume, a killed driver.

Each test runs the real CLI in a subprocess (real local Ray, in-process tracker,
a local device server) and checks the log it leaves.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.procs import all_pids

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs/campaigns/quickstart.yaml"


def farm(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def our_servers() -> set[int]:
    out = set()
    for pid in all_pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"rpc.cli serve" in cmd and b"--key local" in cmd:
            out.add(pid)
    return out


def test_quickstart_campaign_small_budget(tmp_path: Path) -> None:
    log = tmp_path / "qs.jsonl"
    before = our_servers()
    r = farm("tune", str(QUICKSTART), "--trials", "6", "--log", str(log), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "best ms" in r.stdout and "GFLOPS" in r.stdout and "speedup" in r.stdout, r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {t["workload"] for t in summary["tasks"]} == {"matmul", "conv2d"}
    for t in summary["tasks"]:
        assert t["trials"] == 6 and t["best_gflops"] > 0 and t["default_gflops"] > 0
    recs = records(log)
    assert len(recs) == 12
    assert all(r["device"]["fingerprint"].get("triple") for r in recs), "fingerprint stored with every record"
    assert sum(r["result"]["outcome"] == "OK" for r in recs) >= 10
    best = farm("log", "best", str(log), "--json")
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["gflops"] > 0
    # rerun with a bigger budget: resumes, measures only the difference, never twice
    r2 = farm("tune", str(QUICKSTART), "--trials", "8", "--log", str(log), "--json", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    s2 = json.loads(r2.stdout.strip().splitlines()[-1])
    assert s2["resumed"] == 12 and s2["measured"] == 4
    recs = records(log)
    counts = Counter((r["workload"]["name"], r["config"]["index"]) for r in recs)
    assert len(recs) == 16 and max(counts.values()) == 1
    assert our_servers() <= before, "the embedded device server must not outlive the campaign"


def test_killed_driver_resumes_without_remeasuring(tmp_path: Path) -> None:
    log = tmp_path / "k.jsonl"
    before = our_servers()  # other campaigns on this machine may run their own local servers
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.Popen([sys.executable, "-m", "farm.cli", "tune", str(QUICKSTART), "--trials", "24",
                          "--log", str(log), "--no-progress"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.exists() or len(records(log)) < 8):
        time.sleep(0.5)
        assert p.poll() is None, "campaign ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    first = records(log)
    assert 8 <= len(first) < 48
    time.sleep(1.0)
    assert not our_servers() - before, "device server must die with the killed driver (PDEATHSIG)"
    r = farm("tune", str(QUICKSTART), "--trials", "24", "--log", str(log), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["resumed"] == len(first)
    recs = records(log)
    counts = Counter((r["workload"]["name"], r["config"]["index"]) for r in recs)
    assert len(recs) == 48 and max(counts.values()) == 1, "every planned trial exactly once"
