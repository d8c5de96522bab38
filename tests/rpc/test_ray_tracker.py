"""`farm tracker --ray`: a detached named Ray actor that Ray restarts, devices re-register.

A real Ray head (`ray start --head`, token auth) on 127.0.0.1, the tracker actor
on a fixed port, a real CPU device server, and `farm measure` through the CLI.
The actor's process is SIGKILLed; Ray restarts it on the same port, the device
dials back in, the shared log is reopened, and `farm measure` works again.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.client.session import connect
from farm.log import LogRecord, load_log
from farm.records.measure import Outcome
from tests.support import procs
from tests.support.raycluster import RayHead, free_port

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def farm(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT)


def actor_pid(out: str) -> int:
    m = re.search(r"pid (\d+)", out)
    assert m, out
    return int(m.group(1))


def wait_device(address: str, token: str, key: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with connect(address, token=token, timeout=2) as s:
                if any(d["key"] == key for d in s.summary()["devices"]):
                    return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.2)
    raise AssertionError(f"device {key} did not (re-)register at {address}: {last}")


def measure(env: dict[str, str], address: str) -> dict:
    r = farm(env, "measure", "--tracker", address, "--key", "local", "matmul", "--shape", "64,64,64",
             "--timeout", "20", "--queue-timeout", "60", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_ray_tracker_restarts_and_devices_come_back(tmp_path: Path) -> None:
    log = tmp_path / "farm.jsonl"
    with RayHead(num_cpus=1) as head:
        env = dict(head.env, FARM_TOKEN="ray-tracker-test-token")
        port = free_port()
        address = f"127.0.0.1:{port}"
        server = None
        try:
            r = farm(env, "tracker", "--ray", "--port", str(port), "--heartbeat", "0.5", "--log", str(log))
            assert r.returncode == 0, r.stderr[-3000:]
            assert f"listening on {address}" in r.stdout
            pid1 = actor_pid(r.stdout)
            assert procs.is_alive(pid1), "the actor outlives the command that created it"
            # asking again finds the running actor instead of starting a second one
            again = farm(env, "tracker", "--ray", "--port", str(port))
            assert again.returncode == 0 and actor_pid(again.stdout) == pid1, again.stdout + again.stderr

            server = subprocess.Popen([sys.executable, "-m", "rpc.cli", "serve", "--tracker", address, "--key", "local",
                                       "--backoff-cap", "0.5"], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
            wait_device(address, env["FARM_TOKEN"], "local")
            first = measure(env, address)
            assert first["outcome"] == "OK" and first["gflops"] > 0
            with connect(address, token=env["FARM_TOKEN"]) as s:
                s.log_append([LogRecord("matmul", (64, 64, 64), "llvm", "local", 0, {}, Outcome.OK, (1e-4,),
                                        gflops=first["gflops"])])

            os.kill(pid1, signal.SIGKILL)  # the tracker crashes; Ray restarts the actor
            wait_device(address, env["FARM_TOKEN"], "local", timeout=90)
            again = farm(env, "tracker", "--ray", "--port", str(port))
            pid2 = actor_pid(again.stdout)
            assert pid2 != pid1 and procs.is_alive(pid2) and not procs.is_alive(pid1)
            second = measure(env, address)
            assert second["outcome"] == "OK" and second["gflops"] > 0
            with connect(address, token=env["FARM_TOKEN"]) as s:  # the restarted actor reopened the shared log
                assert s.log_query("best", workload="matmul").gflops == first["gflops"]
                assert s.log_append([LogRecord("matmul", (64, 64, 64), "llvm", "local", 1, {}, Outcome.OK, (1e-4,),
                                               gflops=second["gflops"])]) == 1
            assert [r.config_index for r in load_log(log).records] == [0, 1]

            stop = farm(env, "tracker", "--ray", "--stop")
            assert stop.returncode == 0 and "removed" in stop.stdout, stop.stderr
            deadline = time.monotonic() + 30
            while procs.is_alive(pid2) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not procs.is_alive(pid2), "--stop removes the actor for good"
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            assert "was not running" in farm(env, "tracker", "--ray", "--stop").stdout
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
            farm(env, "tracker", "--ray", "--stop", timeout=60)
