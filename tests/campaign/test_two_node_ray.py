"""A two-node Ray cluster on this machine runs a campaign whose builds land on both nodes.

`ray start --head` plus a second `ray start --address` with its own resources;
the cluster uses Ray's token authentication (RAY_AUTH_MODE=token), so the
driver joins with the same token. Results are identical in kind to the local run.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
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
        left = procs.wait_gone(marker, timeout=10)
        shutil.rmtree(temp, ignore_errors=True)  # the cluster's session logs and sockets
        assert not left, "Ray processes of the test cluster outlived it"


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


USER_KERNEL = '''
from farm import te, template


@template("ray_shipped_scale")
def ray_shipped_scale(cfg, n, m):
    A = te.placeholder((n, m), name="A")
    B = te.compute((n, m), lambda i, j: A[i, j] * 1.75 + 0.5, name="B")
    s = te.create_schedule(B.op)
    cfg.define_knob("vec", [0, 1])
    cfg.define_knob("par", [0, 1])
    cfg.define_split("tile", m, num_outputs=2, candidates=[[1, 2, 4, 8, 16]])
    jo, ji = cfg["tile"].apply(s, B, B.op.axis[1])
    if cfg["vec"].val:
        s[B].vectorize(ji)
    if cfg["par"].val:
        s[B].parallel(B.op.axis[0])
    return s, [A, B]
'''

DRIVER = '''
import json, shutil, sys
from farm.campaign.builds import init_ray
from farm.campaign.config import load_campaign
from farm.campaign.driver import CampaignRunner
from farm.campaign.embedded import EmbeddedFarm
from farm.client.session import connect
from farm.workloads.loader import kernel_dirs

spec = load_campaign(sys.argv[1])
dirs = kernel_dirs(w.workload for w in spec.workloads if w.workload is not None)
assert dirs, "the campaign's kernel was not loaded from its file"
init_ray(sys.argv[2], None, dirs)
for d in dirs:  # gone from the disk: a build worker on either node can only use Ray's copy
    shutil.rmtree(d)
with EmbeddedFarm() as farm, connect(farm.address, token=farm.token) as session:
    result = CampaignRunner(spec, session, exclusive_timing=True).run()
print(json.dumps(result.to_json()))
'''


def test_user_template_reaches_workers_through_ray(two_node_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The driver loads a user template, then deletes its file: builds on both nodes still work,
    because Ray's runtime_env (py_modules) shipped the kernel's directory."""
    address, env = two_node_cluster
    kdir = tmp_path / "userkernels"
    kdir.mkdir()
    (kdir / "scale.py").write_text(USER_KERNEL)
    log = tmp_path / "user.jsonl"
    (tmp_path / "user.yaml").write_text(
        f"name: user\nlog: {log}\ntuner: random\ntrials: 10\nbatch_size: 4\n"
        "timing: {repeat: 1, min_repeat_ms: 2, timeout_s: 10}\n"
        "workloads:\n  - {template: userkernels/scale.py:ray_shipped_scale, shape: [64, 200]}\n")
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "user.yaml"), address], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not kdir.exists()
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(summary["build_nodes"]) == 2, f"builds should land on both nodes: {summary['build_nodes']}"
    (task,) = summary["tasks"]
    assert task["ok"] and task["trials"] == 10 and task["checked"] == 10, task
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(recs) == 10 and all(x["result"]["outcome"] == "OK" and x["result"]["checked"] for x in recs)
    assert all(x["workload"]["hash"] == recs[0]["workload"]["hash"] != "" for x in recs)
