"""The device server: dials OUT to the tracker and runs the jobs it is sent.

Dialling out means a board behind NAT or an SSH reverse tunnel needs no
inbound port. The server never gives up: after any failure (tracker down,
restarted, network gone, even a refused token) it reconnects with jittered
exponential backoff and registers again, for as long as it runs.

While connected it heartbeats every ``heartbeat_s`` and expects the tracker's
acks; silence past three beats means the link is dead. Jobs run in isolated
children (``rpc.isolation``), so a crashing or hanging kernel costs one
result. Artifacts are cached by content hash; the tracker learns at
registration which hashes we hold and sends code only for new ones, and if we
evicted one it is asked for again (``need_artifact``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from farm.records.measure import Outcome
from rpc import auth, codec, fields
from rpc.artifacts import ArtifactStore, checked_hash
from rpc.errors import BadRequest, ConnectionLost, ProtocolError, RpcError, from_wire, to_wire
from rpc.isolation import WorkerPool
from rpc.ratelog import PerPeerLog
from rpc.transport import Connection, backoff_delays, parse_address

log = logging.getLogger(__name__)


class DeviceServer:
    """Serve one device key to one tracker. ``await run_forever()``; cancel to stop."""

    def __init__(
        self,
        tracker: str,
        key: str,
        token: bytes,
        *,
        kind: str = "cpu",
        capacity: int = 1,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        load_grace_s: float = 10.0,
        cache_bytes: int = 256 << 20,
        handshake_timeout: float = auth.HANDSHAKE_TIMEOUT,
        protocol_versions: tuple[int, ...] = codec.PROTOCOL_VERSIONS,
    ) -> None:
        if not token:
            raise ValueError("the device server needs a non-empty token")
        self.host, self.port = parse_address(tracker)
        # What the tracker will check in 'register', checked here: a bad name fails at start, once.
        self.key = fields.check(fields.KEY, key, "key")
        self._token = token
        self.kind = kind
        self.capacity = fields.check(fields.CAPACITY, capacity, "capacity")
        self.name = fields.check(fields.NAME, name or f"{socket.gethostname()}-{os.getpid()}", "name")
        self.ssl_context = ssl_context
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.load_grace_s = fields.check(fields.Num(0, fields.MAX_RUN_S), load_grace_s, "load_grace_s")
        self.handshake_timeout = fields.check(fields.Num(0.1, 3600), handshake_timeout, "handshake_timeout")
        self.protocol_versions = tuple(protocol_versions)  # what this server offers (older ones: tests)
        self.store = ArtifactStore(cache_bytes)
        self.pool = WorkerPool(kind, capacity)
        self.registrations = 0
        self.jobs_run = 0
        self._registered = False  # did the current session get as far as registering?
        self._ops: dict[str, Callable[[Connection, codec.Message, set[asyncio.Task[None]]], None]] = {
            "job": self._on_job,
            "artifact": self._on_artifact,
            "heartbeat_ack": lambda conn, msg, tasks: None,
            "registered": lambda conn, msg, tasks: None,
            "error": self._on_error,
        }
        self._refusals = PerPeerLog(log)

    async def run_forever(self) -> None:
        await self.pool.start()
        log.info("device %s (%s) ready: %s", self.name, self.kind, self.pool.describe.get("cpu", ""))
        try:
            delays = backoff_delays(self.backoff_base, self.backoff_cap)
            while True:
                try:
                    await self._session()
                except (RpcError, OSError) as e:
                    log.warning("tracker %s:%d: %s: %s", self.host, self.port, type(e).__name__, e)
                except Exception:  # a bug hit by one session's input must not end the server
                    log.exception("session with %s:%d failed", self.host, self.port)
                if self._registered:  # a session that worked: start the backoff afresh
                    delays = backoff_delays(self.backoff_base, self.backoff_cap)
                await asyncio.sleep(next(delays))
        finally:
            await self.pool.close()

    async def _session(self) -> None:
        self._registered = False
        tasks: set[asyncio.Task[None]] = set()
        heart: asyncio.Task[None] | None = None
        # Dial, authenticate and register under one budget: a tracker that stalls after a few
        # bytes costs one budget (then backoff and a new dial), not a frame deadline per message.
        deadline = asyncio.get_running_loop().time() + self.handshake_timeout
        conn = await auth.dial_address(self.host, self.port, self._token, "device", ssl_context=self.ssl_context,
                                       timeout=self.handshake_timeout, versions=self.protocol_versions)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    registered = await self._register(conn)
            except TimeoutError:
                budget = self.handshake_timeout
                raise ConnectionLost(f"{conn.peer}: not registered {budget:.1f}s after dialling") from None
            heartbeat_s = float(registered["heartbeat_s"])
            self.registrations += 1
            self._registered = True
            log.info("registered with %s:%d as %s", self.host, self.port, registered["device_id"])
            heart = asyncio.create_task(self._heartbeat(conn, heartbeat_s))
            while True:
                msg = await conn.recv(idle_timeout=3 * heartbeat_s)
                handler = self._ops.get(msg.op)
                if handler is None:
                    raise ProtocolError(f"unknown op from tracker {msg.op!r:.40}")
                try:  # every field checked against the table before a handler sees any of it
                    checked = codec.Message(fields.validate(fields.TRACKER_TO_DEVICE, msg.op, msg.header), msg.blobs)
                except BadRequest as e:
                    self._refuse(conn, msg, e, tasks)
                    continue
                handler(conn, checked, tasks)
        finally:
            # Results of running jobs could not be delivered: the tracker
            # requeues them, so stop them (their children are killed).
            for t in [*tasks, *([heart] if heart else [])]:
                t.cancel()
            await asyncio.gather(*tasks, *([heart] if heart else []), return_exceptions=True)
            conn.abort()

    async def _register(self, conn: Connection) -> dict[str, Any]:
        await conn.send({
            "op": "register", "key": self.key, "capacity": self.capacity, "name": self.name,
            "fingerprint": {**self.pool.describe, "kind": self.kind}, "artifacts": self.store.hashes(),
        })
        msg = await conn.recv(idle_timeout=self.handshake_timeout)
        if msg.op == "error":
            raise from_wire(msg.header.get("error"))
        if msg.op != "registered":
            raise ProtocolError(f"expected 'registered', got {msg.op!r:.40}")
        try:
            return fields.validate(fields.TRACKER_TO_DEVICE, msg.op, msg.header)
        except BadRequest as e:  # e.g. a heartbeat_s of "inf": tell the tracker, try again later
            await _answer(conn, e)
            raise

    async def _heartbeat(self, conn: Connection, every: float) -> None:
        try:
            while True:
                await asyncio.sleep(every)
                await conn.send({"op": "heartbeat"})
        except ConnectionLost:
            conn.abort()

    def _refuse(self, conn: Connection, msg: codec.Message, err: BadRequest, tasks: set[asyncio.Task[None]]) -> None:
        """A message with a field we cannot use: answer BadRequest (a job: before anything runs,
        so the job child is not touched). An unusable 'error' is only logged: answering an error
        with an error could go back and forth."""
        if msg.op == "error":
            self._refusals.warning(conn.peer, "tracker %s sent an unusable error: %s", conn.peer, err)
            return
        job_id = msg.header.get("job_id") if msg.op == "job" else None
        task = asyncio.create_task(_answer(conn, err, job_id if isinstance(job_id, str) else None))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _on_error(self, conn: Connection, msg: codec.Message, tasks: set[asyncio.Task[None]]) -> None:
        self._refusals.warning(conn.peer, "tracker %s refused a message: %s", conn.peer,
                               msg.header["error"]["message"][:300])

    def _on_artifact(self, conn: Connection, msg: codec.Message, tasks: set[asyncio.Task[None]]) -> None:
        """A reference a job will name, sent ahead of it: keep it (content-addressed)."""
        try:
            if len(msg.blobs) != 1:
                raise BadRequest("artifact: expected its code as the one blob")
            self.store.put(checked_hash(msg.header["artifact"], msg.blobs[0]), msg.blobs[0])
        except BadRequest as e:
            self._refuse(conn, msg, e, tasks)

    def _on_job(self, conn: Connection, msg: codec.Message, tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(self._run_job(conn, msg.header, msg.blobs))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run_job(self, conn: Connection, h: dict[str, Any], blobs: tuple[bytes, ...]) -> None:
        job_id, artifact, options = h["job_id"], h["artifact"], h["options"]
        try:
            if blobs:
                art_hash = checked_hash(artifact, blobs[0])
                self.store.put(art_hash, blobs[0])
                code = blobs[0]
            else:
                cached = self.store.get(artifact["hash"])
                if cached is None:
                    await conn.send({"op": "need_artifact", "job_id": job_id, "hash": artifact["hash"]})
                    return
                code = cached
            reference = None
            if h.get("reference") is not None:  # the check this kernel carries: never run without it
                ref_header = h["reference"]
                ref_code = self.store.get(ref_header["hash"])
                if ref_code is None:
                    await conn.send({"op": "need_artifact", "job_id": job_id, "hash": ref_header["hash"]})
                    return
                reference = (ref_header, ref_code)
            hard = float(options.get("timeout_s", 30.0)) + self.load_grace_s
            result = await self.pool.run(artifact, code, options, hard, reference)
        except ConnectionLost:
            return
        except (RpcError, ValueError, TypeError, RuntimeError) as e:  # RuntimeError: no job child
            result = {"outcome": Outcome.LOAD_ERROR.value, "message": f"{type(e).__name__}: {e}", "costs": []}
        result["device_key"] = self.key
        # Which server measured it: several may serve one key, and the record names its machine.
        extra = result.get("extra")
        result["extra"] = {**(extra if isinstance(extra, dict) else {}), "device": self.name}
        if len(str(result.get("message", ""))) > fields.MAX_MESSAGE:  # the tracker refuses longer ones
            result["message"] = str(result["message"])[: fields.MAX_MESSAGE - 20] + " ... (clipped)"
        self.jobs_run += 1
        try:
            await conn.send({"op": "result", "job_id": job_id, "result": result})
        except ConnectionLost:
            log.info("result of %s lost with the connection; the tracker requeues it", job_id)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "registrations": self.registrations, "jobs_run": self.jobs_run,
                "crashes": self.pool.crashes, "artifacts": len(self.store)}


async def _answer(conn: Connection, err: RpcError, job_id: str | None = None) -> None:
    """Tell the tracker what we refused (best effort: the connection may be going)."""
    try:
        await conn.send({"op": "error", "job_id": job_id, "error": to_wire(err)})
    except ConnectionLost:
        pass
