"""Campaigns on a shared farm: one tracker (keeping the shared log), one CPU device, a Ray head.

* `farm tune --tracker ADDR --log tracker` appends to the tracker's shared log
  and resumes from its answer, measuring nothing twice.
* Two concurrent campaigns with different `priority:` share the one device:
  the higher one's jobs are served first, even though the lower one queued first.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.log import load_log
from tests.rpc.harness import LocalFarm
from tests.support.raycluster import RayHead

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def campaign_yaml(path: Path, name: str, *, log: str, priority: int = 0, trials: int = 4,
                  min_repeat_ms: int = 50) -> Path:
    path.write_text(f"""name: {name}
log: {log}
device_keys: [local]
tuner: random
trials: {trials}
batch_size: {trials}
priority: {priority}
transfer: false
timing: {{repeat: 2, min_repeat_ms: {min_repeat_ms}, timeout_s: 20}}
workloads:
  - {{name: matmul, shape: [64, 64, 64]}}
""")
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFarm, RayHead, Path]]:
    work = tmp_path_factory.mktemp("shared-farm")
    log = work / "farm.jsonl"
    with RayHead(num_cpus=1) as head:
        farm = LocalFarm(work / "farm", heartbeat=1.0, frame_timeout=10.0)
        try:
            farm.start_tracker(0, "--log", str(log))
            farm.start_server("local", "cpu", name="cpu0")
            farm.wait_devices(farm.client(), 1, "local", timeout=60)
            yield farm, head, log
        finally:
            leaked = farm.close()
        assert not leaked, f"processes outlived the farm: {leaked}"


def tune_cmd(farm: LocalFarm, head: RayHead, yaml: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    env = dict(head.env, FARM_TOKEN=farm.token)
    return [sys.executable, "-m", "farm.cli", "tune", str(yaml), "--tracker", farm.address, "--ray-address",
            head.address, "--no-progress", "--json", *extra], env


def run_tune(farm: LocalFarm, head: RayHead, yaml: Path, cwd: Path, *extra: str) -> dict[str, Any]:
    cmd, env = tune_cmd(farm, head, yaml, *extra)
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_campaign_on_the_trackers_shared_log(shared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm, head, log = shared
    yaml = campaign_yaml(tmp_path / "sl.yaml", "sharedlog", log="tracker")
    first = run_tune(farm, head, yaml, tmp_path)
    assert first["measured"] == 4 and first["resumed"] == 0
    mine = [r for r in load_log(log).records if r.campaign == "sharedlog"]
    assert len(mine) == 4 and all(r.fingerprint.get("triple") for r in mine)
    assert not (tmp_path / "runs").exists(), "no local log: the tracker keeps it"
    best = subprocess.run([sys.executable, "-m", "farm.cli", "log", "best", str(log), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert best.returncode == 0 and json.loads(best.stdout)["gflops"] > 0, best.stderr
    # rerun with a bigger budget: resumes from the tracker's history, measures only the difference
    second = run_tune(farm, head, yaml, tmp_path, "--trials", "6")
    assert second["resumed"] == 4 and second["measured"] == 2
    mine = [r for r in load_log(log).records if r.campaign == "sharedlog"]
    assert len(mine) == 6 and max(Counter(r.config_index for r in mine).values()) == 1
    # `log: tracker` without a tracker is a usage error, not a file called "tracker"
    cmd, env = tune_cmd(farm, head, yaml)
    cmd = [c for c in cmd if c not in ("--tracker", farm.address)]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs --tracker" in r.stderr


def _pending(farm: LocalFarm, client: Any) -> int:
    return int(client.summary()["keys"].get("local", {}).get("pending", 0))


def _wait_pending(
    farm: LocalFarm, client: Any, n: int, procs: list[subprocess.Popen[str]], timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while _pending(farm, client) < n:
        for p in procs:
            assert p.poll() is None, f"campaign ended early: {p.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"only {_pending(farm, client)} of {n} jobs queued"
        time.sleep(0.2)


def test_higher_priority_campaign_is_served_first(shared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm, head, _ = shared
    low_log, high_log = tmp_path / "low.jsonl", tmp_path / "high.jsonl"
    low = campaign_yaml(tmp_path / "low.yaml", "low", log=str(low_log), priority=0, min_repeat_ms=100)
    high = campaign_yaml(tmp_path / "high.yaml", "high", log=str(high_log), priority=10, min_repeat_ms=100)
    gate = farm.client()
    # Hold the only device so both campaigns' jobs queue; the low one queues all of its jobs first,
    # so first-come-first-served would run it first. Releasing the lease opens the device.
    lease = gate.lease("local", queue_timeout_s=60)
    running: list[subprocess.Popen[str]] = []
    try:
        for yaml, n in ((low, 4), (high, 8)):
            cmd, env = tune_cmd(farm, head, yaml)
            running.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, stdin=subprocess.DEVNULL))
            _wait_pending(farm, gate, n, running)
        gate.release(lease["lease_id"])
        outs = [p.communicate(timeout=300) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(running, outs):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["measured"] == 4, "both campaigns complete"
    lo, hi = load_log(low_log).records, load_log(high_log).records
    assert len(lo) == len(hi) == 4
    assert all(r.ok for r in lo + hi), [r.message for r in lo + hi if not r.ok]
    # the device ran every job of the high-priority campaign before any of the low one's
    assert max(r.timestamp for r in hi) < min(r.timestamp for r in lo), (
        sorted((r.timestamp, r.campaign) for r in lo + hi))
