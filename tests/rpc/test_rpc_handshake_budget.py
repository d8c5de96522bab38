"""One 10 s handshake budget on both sides (issue #18, 4).

A peer that sends 20 bytes of its hello and stalls used to hold `farm query` for 30.4 s and
`farm serve` for 30.0 s: each read had its own deadline, and a started frame had the 30 s frame
deadline on top. Now dialling, the handshake and (for a device) registration share one budget.
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rpc import auth, codec
from rpc.errors import ConnectionLost
from rpc.tracker import Tracker
from tests.rpc.harness import ROOT, LocalFarm

BUDGET = auth.HANDSHAKE_TIMEOUT


class StallingPeer:
    """Accepts TCP, sends the first 20 bytes of a hello, then says nothing; records how long
    each dialler stayed before hanging up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)
        self._accept.start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._stall, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _stall(self, conn: socket.socket) -> None:
        t0 = time.monotonic()
        hello = codec.encode_bytes({"op": "hello", "versions": [1], "nonce": "ab" * 32})
        conn.settimeout(60)
        try:
            conn.sendall(hello[:20])
            while conn.recv(4096):
                pass
        except OSError:
            pass
        self.held.append(time.monotonic() - t0)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self.sock.close()


def test_a_stalling_peer_costs_one_budget_everywhere(tmp_path: Path) -> None:
    from farm.client.session import connect

    peer = StallingPeer()
    farm = LocalFarm(tmp_path / "farm")  # only for its environment and process bookkeeping
    env = farm.env()
    try:
        serve = farm._spawn(["serve", "--tracker", peer.address, "--key", "k", "--kind",
                             "tests.rpc.fake_backend:FakeBackend", "--backoff-cap", "30"], "serve")
        t0 = time.monotonic()
        query = subprocess.Popen([sys.executable, "-m", "farm.cli", "query", "--tracker", peer.address], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t1 = time.monotonic()
        with pytest.raises(ConnectionLost, match="no handshake within"):
            connect(peer.address, token=farm.token)
        connect_s = time.monotonic() - t1
        out, err = query.communicate(timeout=60)
        query_s = time.monotonic() - t0
        deadline = time.monotonic() + 15
        while len(peer.held) < 3 and time.monotonic() < deadline:  # query, connect, and serve's first dial
            time.sleep(0.1)
        serve.stop()
    finally:
        farm.close()
        peer.close()
    assert BUDGET - 0.5 < connect_s <= BUDGET + 0.5, connect_s
    assert query.returncode == 1 and "no handshake within 10.0s" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert query_s <= BUDGET + 2.0, query_s  # the budget plus the interpreter's start
    assert len(peer.held) >= 3 and max(peer.held) <= BUDGET + 0.5, peer.held  # serve, query and connect
    assert "no handshake within" in serve.output()


def test_tracker_budget_covers_a_devices_register() -> None:
    """Authenticated, then half a register frame and silence: dropped at the handshake budget,
    not the (longer) frame deadline."""

    async def main() -> float:
        tracker = Tracker(b"tok", handshake_timeout=1.0, frame_timeout=30.0)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            conn = await auth.dial_address("127.0.0.1", port, b"tok", "device")
            frame = codec.encode_bytes({"op": "register", "key": "k", "pad": "x" * 100})
            conn.writer.write(frame[: len(frame) // 2])
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost):
                await conn.recv(idle_timeout=10)
            return time.monotonic() - t0
        finally:
            await tracker.stop()

    took = asyncio.run(main())
    assert took < 2.0, took
