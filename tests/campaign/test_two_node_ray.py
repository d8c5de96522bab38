"""A two-node Ray cluster on this machine runs a campaign whose builds land on both nodes.

`ray start --head` plus a second `ray start --address` with its own resources;
the cluster uses Ray's token authentication (RAY_AUTH_MODE=token), so the
driver joins with the same token. Results are identical in kind to the local run.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.procs import all_pids

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def _pids_with(marker: bytes) -> list[int]:
    out = []
    for pid in all_pids():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


@pytest.fixture
def two_node_cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    temp = Path("/tmp") / f"kf-ray-{secrets.token_hex(3)}"  # Ray's socket paths must stay short
    # Every process of this cluster inherits the marker: teardown stops exactly those
    # (`ray stop --force` would also kill other people's clusters on a shared machine).
    marker = f"KF_RAY_TEST_{secrets.token_hex(4)}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               **{marker: "1"})
    port = _free_port()
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1", '--resources={"node_a": 1}',
                        "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                        f"--temp-dir={temp}"], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node_b": 1}',
                        "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env
    finally:
        procs.kill_all(sorted(set(procs.find_marked(marker)) | set(_pids_with(str(temp).encode()))), grace=5.0)
        assert not procs.wait_gone(marker, timeout=10), "Ray processes of the test cluster outlived it"


def test_campaign_builds_on_both_nodes(two_node_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    address, env = two_node_cluster
    log = tmp_path / "two.jsonl"
    r = subprocess.run([sys.executable, "-m", "farm.cli", "tune", str(ROOT / "configs/campaigns/quickstart.yaml"),
                        "--ray-address", address, "--trials", "10", "--log", str(log), "--json", "--no-progress"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(summary["build_nodes"]) == 2, f"builds should land on both nodes: {summary['build_nodes']}"
    assert all(n >= 1 for n in summary["build_nodes"].values())
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(recs) == 20
    assert {r["result"]["outcome"] for r in recs} <= {
        "OK",
        "COMPILE_ERROR",
        "WRONG_ANSWER",
        "RUNTIME_ERROR",
        "RUN_TIMEOUT",
    }
    assert all(t["best_gflops"] > 0 for t in summary["tasks"])
