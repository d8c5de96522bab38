"""A real single-node Ray cluster (`ray start --head`) for tests, with token auth.

Stopped by killing exactly the processes it started: every one carries a marker
in its environment (Ray's daemons and workers inherit it). `ray stop --force`
would also kill other people's clusters on a shared machine.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from . import procs


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class RayHead:
    """``with RayHead(num_cpus=1) as ray_: ray_.address, ray_.env``."""

    def __init__(self, num_cpus: int = 1) -> None:
        self.num_cpus = num_cpus
        self.marker = f"KF_RAY_TEST_{secrets.token_hex(4)}"
        self.temp = Path("/tmp") / f"kf-ray-{secrets.token_hex(3)}"  # Ray's socket paths must stay short
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth as `ray start --head` enables it; head, workers and drivers share the token.
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_ADDRESS=self.address, **{self.marker: "1"})

    def start(self) -> RayHead:
        env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        r = subprocess.run(["ray", "start", "--head", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
                            "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                            f"--temp-dir={self.temp}"], env=env, capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {r.stderr[-2000:]}")
        return self

    def stop(self) -> None:
        pids = procs.find_marked(self.marker)
        procs.kill_all(pids, grace=5.0)
        left = procs.wait_gone(self.marker, timeout=10)
        if left:
            procs.kill_all(left)
        shutil.rmtree(self.temp, ignore_errors=True)  # the cluster's session logs and sockets

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
