"""The embedded default farm: an in-process tracker plus local device servers.

The tracker runs on its own event-loop thread in this process; device servers
are child processes (`farm serve`) that die with this process (PDEATHSIG), so
a killed campaign driver leaves nothing behind.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from rpc.lifetime import die_with_parent

log = logging.getLogger(__name__)


def _die_on_parent_exit() -> None:  # runs in the child between fork and exec
    die_with_parent(signal.SIGTERM)


class EmbeddedFarm:
    """``with EmbeddedFarm() as farm: farm.address``: a tracker and ``servers`` local devices."""

    def __init__(self, key: str = "local", servers: int = 1, token: bytes | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.key, self.servers = key, servers
        self.token = token or secrets.token_hex(24).encode()
        self.start_timeout_s = start_timeout_s
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tracker: Any = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> EmbeddedFarm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from rpc.tracker import Tracker

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-tracker", daemon=True)
        self._thread.start()
        self._tracker = Tracker(self.token, heartbeat_s=1.0)
        host, port = asyncio.run_coroutine_threadsafe(self._tracker.start("127.0.0.1", 0), self._loop).result(10)
        self.address = f"{host}:{port}"
        env = dict(os.environ, FARM_TOKEN=self.token.decode())
        for n in range(self.servers):
            cmd = [sys.executable, "-m", "rpc.cli", "serve", "--tracker", self.address, "--key", self.key,
                   "--name", f"{self.key}-{n}"]
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, preexec_fn=_die_on_parent_exit))
        self._wait_registered()
        log.info("embedded farm: tracker %s, %d device server(s) on key %r", self.address, self.servers, self.key)

    def _wait_registered(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace")[-2000:] if p.stderr else ""
                    raise RuntimeError(f"local device server exited with {p.returncode}: {err.strip()}")
            n = len([d for d in self._tracker.devices])
            if n >= self.servers:
                return
            time.sleep(0.05)
        raise RuntimeError(f"local device servers did not register within {self.start_timeout_s:.0f}s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stderr:
                p.stderr.close()
        self.procs = []
        if self._loop is not None:
            if self._tracker is not None:
                try:
                    asyncio.run_coroutine_threadsafe(self._tracker.stop(), self._loop).result(10)
                except Exception as e:  # noqa: BLE001 - shutting down regardless
                    log.debug("tracker stop: %r", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
            self._loop = None
