"""A real `farm tune --tracker` campaign (matmul 64^3, Ray builds, a CPU device) shows on the page's API.

farm tune composes its reporter with the terminal progress: while it runs the tracker knows the
campaign, and at its end /api/campaigns has it finished, with every trial, its best GFLOPS and
a curve point per trial.
"""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.rpc.harness import LocalFarm
from tests.support.raycluster import RayHead

pytestmark = pytest.mark.ray
TRIALS = 6


def api(port: int, token: str, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        assert r.status == 200, (path, r.status)
        return json.loads(r.read())
    finally:
        conn.close()


def test_farm_tune_reports_to_the_page(tmp_path: Path) -> None:
    yaml = tmp_path / "webtune.yaml"
    yaml.write_text(f"""name: webtune
log: {tmp_path / 'webtune.jsonl'}
device_keys: [local]
tuner: random
trials: {TRIALS}
batch_size: 2
transfer: false
timing: {{repeat: 2, min_repeat_ms: 20, timeout_s: 20}}
workloads:
  - {{name: matmul, shape: [64, 64, 64]}}
""")
    with RayHead(num_cpus=1) as head:
        farm = LocalFarm(tmp_path / "farm", heartbeat=1.0, frame_timeout=10.0)
        try:
            farm.start_tracker(0, "--http", "127.0.0.1:0")
            assert farm.tracker is not None and farm.tracker.popen.stdout is not None
            m = re.search(r"tracker page on http://127\.0\.0\.1:(\d+)/", farm.tracker.popen.stdout.readline().decode())
            assert m
            page = int(m.group(1))
            farm.start_server("local", "cpu", name="cpu0")
            client = farm.client()
            farm.wait_devices(client, 1, "local", timeout=60)
            env = dict(head.env, FARM_TOKEN=farm.token)
            errlog = open(tmp_path / "tune.err", "w")  # noqa: SIM115 - closed below; a pipe could fill and block
            p = subprocess.Popen([sys.executable, "-m", "farm.cli", "tune", str(yaml), "--tracker", farm.address,
                                  "--ray-address", head.address, "--no-progress", "--json"], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=errlog, text=True, stdin=subprocess.DEVNULL)
            seen_running = False
            while p.poll() is None:
                seen_running |= any(c["name"] == "webtune" and c["state"] == "running"
                                    for c in client.summary()["campaigns"])
                time.sleep(0.2)
            out, _ = p.communicate(timeout=60)
            errlog.close()
            assert p.returncode == 0, (tmp_path / "tune.err").read_text()[-3000:]
            result = json.loads(out.strip().splitlines()[-1])
            assert seen_running, "the campaign never showed as running while it ran"
            (c,) = client.summary()["campaigns"]
            assert c["name"] == "webtune" and c["state"] == "finished" and c["trials_done"] == TRIALS
            assert c["budget"] == TRIALS
            (t,) = result["tasks"]
            curve = api(page, farm.token, "/api/campaigns/webtune/curve")
            (pts,) = [task["points"] for task in curve["tasks"]]
            assert [int(x) for x, _ in pts] == list(range(1, TRIALS + 1))  # one point per trial
            assert pts[-1][1] == pytest.approx(t["best_gflops"]) and t["best_gflops"] > 0
            assert curve["version"] >= 2  # reported while running, then at its end
        finally:
            leaked = farm.close()
        assert not leaked, f"processes outlived the farm: {leaked}"


def test_the_ray_tracker_serves_the_page_and_keeps_its_port_across_a_restart(tmp_path: Path) -> None:
    from tests.support import procs
    from tests.support.raycluster import free_port

    token = "ray-page-token"
    with RayHead(num_cpus=1) as head:
        env = dict(head.env, FARM_TOKEN=token, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        port, page = free_port(), free_port()

        def tracker(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "farm.cli", "tracker", "--ray", *args], env=env,
                                  capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)

        try:
            r = tracker("--port", str(port), "--heartbeat", "0.5", "--http", f"127.0.0.1:{page}")
            assert r.returncode == 0, r.stderr[-3000:]
            assert f"tracker page on http://127.0.0.1:{page}/" in r.stdout, r.stdout
            assert api(page, token, "/api/summary")["devices"] == []
            off = tracker("--port", str(port), "--http", "0.0.0.0:0")  # off loopback without TLS
            assert off.returncode == 1 and "needs TLS" in off.stderr, off.stderr
            m = re.search(r"pid (\d+)", r.stdout)
            assert m
            procs.kill_all([int(m.group(1))])  # Ray restarts the actor: the page comes back on its port
            deadline = time.monotonic() + 90
            while True:
                try:
                    assert api(page, token, "/api/devices")["devices"] == []
                    break
                except (OSError, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        finally:
            tracker("--stop")
