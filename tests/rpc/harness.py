"""Real tracker and device-server processes on 127.0.0.1, port 0, for tests and benchmarks.

Every process gets a unique marker in its environment (inherited by the job
children) so teardown can prove that nothing was left behind.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rpc.client import Client
from tests.support.procs import find_marked, kill_all

ROOT = Path(__file__).resolve().parents[2]
FAKE_KIND = "tests.rpc.fake_backend:FakeBackend"


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path, what: str) -> None:
        self.popen, self.log, self.what = popen, log, what

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalFarm:
    """Start/stop a tracker and device servers; ``close()`` kills and checks for leaks."""

    def __init__(self, workdir: Path, *, heartbeat: float = 0.5, frame_timeout: float = 2.0) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.marker = f"KF_RPC_TEST_{secrets.token_hex(6)}"
        self.heartbeat = heartbeat
        self.frame_timeout = frame_timeout
        self.procs: list[Proc] = []
        self.clients: list[Client] = []
        self.tracker: Proc | None = None
        self.address = ""
        self._n = 0

    def env(self, token: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["FARM_TOKEN"] = self.token if token is None else token
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env[self.marker] = "1"
        return env

    def _spawn(self, args: list[str], what: str, stdout: Any = None, token: str | None = None) -> Proc:
        self._n += 1
        log = self.workdir / f"{self._n:02d}-{what}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", "rpc.cli", *args], cwd=ROOT, env=self.env(token),
                stdout=stdout if stdout is not None else fh, stderr=fh,
            )
        proc = Proc(popen, log, what)
        self.procs.append(proc)
        return proc

    def start_tracker(self, port: int = 0, *extra: str, timeout: float = 20.0) -> str:
        args = ["tracker", "--host", "127.0.0.1", "--port", str(port), "--heartbeat", str(self.heartbeat),
                "--frame-timeout", str(self.frame_timeout), "--handshake-timeout", str(self.frame_timeout), *extra]
        proc = self._spawn(args, "tracker", stdout=subprocess.PIPE)
        assert proc.popen.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = proc.popen.stdout.readline()
            m = re.search(rb"listening on ([\d.]+):(\d+)", line)
            if m:
                self.tracker = proc
                self.address = f"{m.group(1).decode()}:{int(m.group(2))}"
                return self.address
            if not line and not proc.alive():
                break
        raise RuntimeError(f"tracker did not start: {line!r} {proc.output()}")

    def start_server(self, key: str, kind: str = FAKE_KIND, *extra: str, name: str | None = None,
                     token: str | None = None) -> Proc:
        self._n += 1
        name = name or f"{key}-{self._n}"
        args = ["serve", "--tracker", self.address, "--key", key, "--kind", kind, "--name", name,
                "--load-grace", "1", "--backoff-cap", "0.5", *extra]
        proc = self._spawn(args, f"serve-{name}", token=token)
        proc.what = name
        return proc

    def client(self, token: str | None = None) -> Client:
        c = Client(self.address, (token or self.token).encode())
        self.clients.append(c)
        return c

    def wait_devices(self, client: Client, n: int, key: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = client.summary()
            devs = [d for d in s["devices"] if key is None or d["key"] == key]
            if len(devs) >= n:
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(devs)} of {n} devices registered: {s}\n" + self.logs())
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(f"--- {p.what} ---\n{p.output()[-3000:]}" for p in self.procs)

    def close(self) -> list[int]:
        """Stop everything; return pids that carried our marker and had to be killed late."""
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        for p in self.procs:
            p.stop()
        leaked = find_marked(self.marker)
        if leaked:
            kill_all(leaked)
        return leaked
