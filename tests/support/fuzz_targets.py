"""Fuzzing a real tracker and a real device server, with end-to-end probes.

``fuzz_tracker``: fresh connections carrying pre-auth inputs (each must end with
the tracker closing the connection promptly, never a hang), plus authenticated
client and device connections carrying frames with wrong fields. Every
``probe_every`` inputs a real job is submitted on a fresh authenticated
connection and must come back measured (OK) from a real device server.

``FuzzTracker``: the device server dials out, so to fuzz it we are its tracker:
the real handshake (``rpc.auth.accept``) and then hostile frames, or garbage
in place of the ``hello``; every ``probe_every`` inputs a real job (a fake
artifact with its code) must come back OK from the server's isolated child.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpc import auth, codec
from rpc.client import AsyncClient
from rpc.errors import RpcError
from rpc.transport import Connection, open_connection, parse_address, start_server
from tests.support import fuzz

log = logging.getLogger(__name__)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


@dataclass
class FuzzStats:
    inputs: int = 0
    probes: int = 0
    probe_failures: list[str] = field(default_factory=list)
    hangs: int = 0  # inputs after which the peer neither answered nor closed in time
    categories: Counter[str] = field(default_factory=Counter)
    rss_mb: list[float] = field(default_factory=list)  # after each probe


def _probe_artifact(n: int) -> tuple[dict[str, Any], bytes]:
    from tests.rpc.fake_backend import fake_artifact

    art = fake_artifact("ok", sleep=0.0, tag=f"probe-{n}")  # new code each time: exercises the upload too
    return art.header(), art.code


# ---- the tracker -------------------------------------------------------------------------
async def _preauth(host: str, port: int, data: bytes, timeout: float) -> bool:
    """Send ``data`` on a fresh connection, then EOF; True when the tracker closed in time."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
        return True
    except OSError:
        return True  # reset by the tracker: it dropped us
    except TimeoutError:
        return False
    finally:
        writer.transport.abort()


class _AuthedPeer:
    """An authenticated connection whose replies are drained in the background."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.received: Counter[str] = Counter()
        self._drain = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, address: str, token: bytes, role: str) -> _AuthedPeer:
        host, port = parse_address(address)
        conn = await open_connection(host, port)
        await auth.dial(conn, token, role)
        conn.limits = codec.Limits()
        return cls(conn)

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.conn.recv()
                self.received[msg.op] += 1
        except (RpcError, OSError):
            self.conn.abort()

    @property
    def alive(self) -> bool:
        return not self._drain.done()

    async def send_raw(self, data: bytes) -> None:
        try:
            self.conn.writer.write(data)
            await self.conn.writer.drain()
        except (OSError, RuntimeError):
            self.conn.abort()
        await asyncio.sleep(0)

    async def close(self) -> None:
        self.conn.abort()
        await asyncio.gather(self._drain, return_exceptions=True)


async def probe_tracker(address: str, token: bytes, key: str, n: int, timeout: float = 20.0) -> None:
    """A real job through the tracker to a device of ``key``; raises unless it comes back OK."""
    async with asyncio.timeout(timeout):
        client = await AsyncClient.connect(address, token)
        try:
            header, code = _probe_artifact(n)
            job_id = await client.submit(header, code, key, {"repeat": 1, "timeout_s": 5})
            result = await client.result(job_id)
        finally:
            await client.close()
    if result.get("outcome") != "OK":
        raise AssertionError(f"probe {n}: {result}")


async def fuzz_tracker(address: str, token: bytes, *, probe_key: str, inputs: int, seed: int = 0,
                       pid: int | None = None, probe_every: int = 100, concurrency: int = 8,
                       close_timeout: float = 5.0) -> FuzzStats:
    """``inputs`` hostile inputs at a live tracker (see the module doc)."""
    rng = random.Random(seed)
    host, port = parse_address(address)
    stats = FuzzStats()
    client: _AuthedPeer | None = None
    sem = asyncio.Semaphore(concurrency)
    for chunk_start in range(0, inputs, probe_every):
        n = min(probe_every, inputs - chunk_start)
        pre = [fuzz.preauth_input(rng) for _ in range(int(n * 0.55))]

        async def one(cat: str, data: bytes) -> None:
            async with sem:
                if not await _preauth(host, port, data, close_timeout):
                    stats.hangs += 1
                    log.warning("tracker kept a connection open after %s input", cat)

        await asyncio.gather(*(one(c, d) for c, d in pre))
        stats.categories.update(c for c, _ in pre)
        left = n - len(pre)
        n_dev = left // 3
        # authenticated client: many frames on one connection, reconnecting when dropped
        for _ in range(left - n_dev):
            if client is None or not client.alive:
                if client is not None:
                    await client.close()
                client = await _AuthedPeer.open(address, token, "client")
            cat, data = fuzz.postauth_input(rng, fuzz.CLIENT_OPS)
            await client.send_raw(data)
            stats.categories[cat] += 1
        # authenticated devices: a (maybe mutated) register, then a few hostile frames
        sent = 0
        while sent < n_dev:
            dev = await _AuthedPeer.open(address, token, "device")
            await dev.send_raw(fuzz.frame(fuzz.register_message(rng, "fuzz-dev")))
            sent += 1
            for _ in range(min(rng.randint(1, 12), n_dev - sent)):
                cat, data = fuzz.postauth_input(rng, fuzz.DEVICE_OPS)
                await dev.send_raw(data)
                stats.categories["device:" + cat] += 1
                sent += 1
            await dev.close()
        stats.categories["device:register"] += 1
        stats.inputs += n
        if client is not None and chunk_start % 1000 == 0:  # let the tracker forget our queued junk jobs
            await client.close()
            client = None
        try:
            await probe_tracker(address, token, probe_key, stats.probes)
        except Exception as e:  # noqa: BLE001 - recorded; the test asserts there are none
            stats.probe_failures.append(f"after {stats.inputs} inputs: {type(e).__name__}: {e}")
        stats.probes += 1
        if pid is not None:
            stats.rss_mb.append(rss_mb(pid))
    if client is not None:
        await client.close()
    return stats


# ---- the device server ------------------------------------------------------------------
class FuzzTracker:
    """A hostile tracker on 127.0.0.1:0 for one device server to dial."""

    def __init__(self, token: bytes, seed: int = 0) -> None:
        self.token = token
        self.rng = random.Random(seed)
        self.address = ""
        self.stats = FuzzStats()
        self.unexpected_results: list[str] = []  # fuzzed jobs that were run instead of refused
        self._server: asyncio.Server | None = None
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._preauth: tuple[str, bytes] | None = None
        self._preauth_done = asyncio.Event()
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count()

    async def start(self) -> str:
        self._server = await start_server(self._on_connection, "127.0.0.1", 0, frame_timeout=5.0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._conn is not None:
            self._conn.abort()
        await asyncio.sleep(0.1)  # let the connection's task see the abort and end before the loop closes

    async def _on_connection(self, conn: Connection) -> None:
        if self._preauth is not None:
            _, data = self._preauth
            self._preauth = None
            conn.writer.write(data)  # in place of the hello
            try:
                await conn.writer.drain()
                conn.writer.write_eof()  # a truncated frame then EOF, not a 30 s frame deadline
                async with asyncio.timeout(5.0):  # the device must hang up on us
                    while await conn.reader.read(1 << 16):
                        pass
            except TimeoutError:
                self.stats.hangs += 1
            except OSError:
                pass
            self._preauth_done.set()
            return
        await auth.accept_with_deadline(conn, self.token)
        conn.limits = codec.Limits()
        reg = await conn.recv(idle_timeout=5.0)
        if reg.op != "register":
            raise AssertionError(f"device sent {reg.op!r} instead of register")
        await conn.send({"op": "registered", "device_id": "fuzzdev", "heartbeat_s": 1.0})
        self._conn = conn
        self._connected.set()
        try:
            while True:
                msg = await conn.recv(idle_timeout=10.0)
                if msg.op == "heartbeat":
                    await conn.send({"op": "heartbeat_ack"})
                elif msg.op == "result":
                    job_id = str(msg.header.get("job_id"))
                    fut = self._results.get(job_id)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.header.get("result") or {})
                    elif (msg.header.get("result") or {}).get("outcome") != "LOAD_ERROR":
                        # a malformed job is refused, never run
                        self.unexpected_results.append(f"{job_id}: {msg.header.get('result')!r:.200}")
        finally:
            self._connected.clear()
            self._conn = None

    async def _connection(self, timeout: float = 20.0) -> Connection:
        async with asyncio.timeout(timeout):
            while self._conn is None or self._conn.closed:
                self._connected.clear()
                await self._connected.wait()
        return self._conn

    async def probe(self, timeout: float = 30.0) -> None:
        """A real job to the device; raises unless an OK result comes back."""
        n = next(self._ids)
        header, code = _probe_artifact(n)
        job_id = f"probe{n}"
        async with asyncio.timeout(timeout):
            while True:  # a connection dropped under the probe: send it again on the next one
                conn = await self._connection(timeout)
                fut = self._results[job_id] = asyncio.get_running_loop().create_future()
                try:
                    await conn.send({"op": "job", "job_id": job_id, "artifact": header,
                                     "options": {"repeat": 1, "timeout_s": 5}}, [code])
                except RpcError:
                    continue
                # A hostile frame queued before the probe may end this connection: then send it again.
                while not fut.done() and not conn.closed:
                    await asyncio.sleep(0.02)
                if fut.done():
                    result = fut.result()
                    if result.get("outcome") != "OK":
                        raise AssertionError(f"probe {n}: {result}")
                    return

    async def fuzz(self, inputs: int, *, pid: int | None = None, probe_every: int = 100,
                   preauth_share: float = 0.03) -> FuzzStats:
        """Send ``inputs`` hostile inputs to the connected device server, probing as we go."""
        for i in range(inputs):
            if self.rng.random() < preauth_share:
                self._preauth = fuzz.preauth_input(self.rng)
                self.stats.categories["pre:" + self._preauth[0]] += 1
                self._preauth_done.clear()
                conn = self._conn
                if conn is not None:
                    conn.abort()  # make it dial again, into the garbage
                try:
                    async with asyncio.timeout(30.0):
                        await self._preauth_done.wait()
                except TimeoutError:
                    self.stats.hangs += 1
            else:
                conn = await self._connection()
                cat, data = fuzz.postauth_input(self.rng, fuzz.TRACKER_OPS)
                try:
                    conn.writer.write(data)
                    await conn.writer.drain()
                    if cat == "garbage-after-auth":
                        conn.writer.write_eof()  # else a frame prefix in it waits out the frame deadline
                except (OSError, RuntimeError):
                    conn.abort()
                self.stats.categories[cat] += 1
                await asyncio.sleep(0)
            self.stats.inputs += 1
            if (i + 1) % probe_every == 0:
                t0 = time.monotonic()
                try:
                    await self.probe()
                except Exception as e:  # noqa: BLE001 - recorded; the test asserts there are none
                    self.stats.probe_failures.append(f"after {i + 1} inputs: {type(e).__name__}: {e}")
                log.debug("device probe %.3fs", time.monotonic() - t0)
                self.stats.probes += 1
                if pid is not None:
                    self.stats.rss_mb.append(rss_mb(pid))
        return self.stats

