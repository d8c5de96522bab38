"""The tracker: an asyncio server that translates wire messages into events of
``rpc.queue.SchedulerQueue`` and its actions back into messages.

Every connection first passes the token handshake (``rpc.auth``) under pre-auth
frame limits, then says what it is: role "device" (a device server that dialled
in; it must send ``register`` next) or role "client". Requests are named ops
dispatched through handler tables; a client request carries ``rid`` and gets
``reply`` or ``error`` with that ``rid``; job results arrive later as
``job_done`` / ``job_failed``.

The queue object is only touched from synchronous code between awaits, and
each peer has an outbox drained by its own writer task, so actions never
interleave on a connection and a slow peer never blocks the others.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rpc import auth, codec, fields
from rpc.artifacts import ArtifactStore, checked_hash
from rpc.errors import ArtifactMissing, BadRequest, ConnectionLost, NoSuchLease, ProtocolError, RpcError, to_wire
from rpc.peer import Payload, Peer, reference_of, send_job
from rpc.queue import (
    Action,
    Dispatch,
    DropDevice,
    JobDone,
    JobFailed,
    JobSpec,
    LeaseFailed,
    LeaseGranted,
    SchedulerQueue,
)
from rpc.ratelog import PerPeerLog
from rpc.transport import Connection, start_server
from rpc.view import FarmView

log = logging.getLogger(__name__)

# The device's hard timeout covers load + run; the tracker allows this much more
# (transfer, child restart) before it calls the device wedged.
RUN_GRACE_S = 60.0


class Tracker:
    """Accepts devices and clients; owns the queue. Start with ``start()``."""

    def __init__(
        self,
        token: bytes,
        *,
        heartbeat_s: float = 2.0,
        max_retries: int = 2,
        ssl_context: ssl.SSLContext | None = None,
        frame_timeout: float = 30.0,
        handshake_timeout: float = auth.HANDSHAKE_TIMEOUT,
        tick_s: float = 0.25,
        artifact_cache_bytes: int = 512 << 20,
        log_path: str | None = None,
    ) -> None:
        if not token:
            raise ValueError("the tracker needs a non-empty token")
        self._token = token
        # Devices refuse a heartbeat_s outside this rule (it reaches them in 'registered').
        self.heartbeat_s = fields.check(fields.HEARTBEAT_S, heartbeat_s, "heartbeat_s")
        self.queue = SchedulerQueue(max_retries=max_retries, heartbeat_timeout=3 * heartbeat_s)
        self.ssl_context = ssl_context
        self.frame_timeout = fields.check(fields.Num(0.01, 3600), frame_timeout, "frame_timeout")
        self.handshake_timeout = fields.check(fields.Num(0.01, 3600), handshake_timeout, "handshake_timeout")
        self.tick_s = tick_s
        # Ids carry this instance's tag: after a restart "job1" of the old tracker and of the
        # new one are different ids, so a stale id can never match a new job or lease.
        self.instance = secrets.token_hex(4)
        self._refusals = PerPeerLog(log)
        self._conns: set[Connection] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self.store = ArtifactStore(artifact_cache_bytes)
        self.devices: dict[str, Peer] = {}
        self.clients: dict[str, Peer] = {}
        self.payloads: dict[str, Payload] = {}
        self.ref_headers: dict[str, dict[str, Any]] = {}  # headers of put artifacts, by hash
        self.lease_rids: dict[str, tuple[str, Any]] = {}  # lease id -> (client id, rid) until granted
        self.view = FarmView()  # lost devices, outcomes, failures, campaigns: what the live page shows
        self.web: Any = None  # rpc.web.WebServer, when started with start_http
        self.stats = {"jobs_submitted": 0, "client_uploads": 0, "client_upload_bytes": 0, "device_uploads": 0,
                      "device_upload_bytes": 0, "bad_connections": 0}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._device_ops: dict[str, Callable[[str, Peer, codec.Message], None]] = {
            "heartbeat": self._on_heartbeat,
            "result": self._on_result,
            "need_artifact": self._on_need_artifact,
            "error": self._on_refused,
        }
        self._client_ops: dict[str, Callable[[str, Peer, codec.Message], Awaitable[dict[str, Any] | None]]] = {
            "ping": self._op_ping,
            "has": self._op_has,
            "put": self._op_put,
            "submit": self._op_submit,
            "lease": self._op_lease,
            "release": self._op_release,
            "summary": self._op_summary,
            "describe": self._op_describe,
            "campaign_report": self._op_campaign_report,
        }
        self.log_service: Any = None
        if log_path:  # the farm's shared log (rpc.logservice imports farm.log, so only when asked)
            from rpc.logservice import LogService

            self.log_service = LogService(log_path)
            self._client_ops.update(self.log_service.ops())

    # ---- lifecycle -----------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await start_server(
            self._on_connection, host, port, ssl_context=self.ssl_context, frame_timeout=self.frame_timeout
        )
        self._ticker = asyncio.create_task(self._tick_loop())
        sock = self._server.sockets[0].getsockname()
        log.info("tracker listening on %s:%d", sock[0], sock[1])
        return sock[0], sock[1]

    async def start_http(self, host: str = "127.0.0.1", port: int = 0,
                         ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        """Serve the live page and the JSON API (``rpc.web``) from this tracker's event loop."""
        from rpc.web import WebServer

        self.web = WebServer(self, self._token, ssl_context=ssl_context)
        return await self.web.start(host, port)

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self._ticker:
            self._ticker.cancel()
        if self._server:
            self._server.close()
        for conn in self._conns:  # peers, and strangers still in their handshake
            conn.abort()
        if self._conn_tasks:  # let each connection's task see its abort and end before the loop does
            await asyncio.wait(self._conn_tasks, timeout=2.0)
        if self._server:
            await self._server.wait_closed()
        if self.log_service is not None:
            self.log_service.close()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            actions = self.queue.tick(now)
            self.view.lost(actions, now)  # tombstones for the devices the tick dropped
            self._apply(actions)
            if len(self.payloads) > len(self.queue.jobs):
                # Jobs dropped without a reply (their client left): forget their payloads.
                for job_id in [j for j in self.payloads if j not in self.queue.jobs]:
                    del self.payloads[job_id]

    # ---- connections ---------------------------------------------------
    def _new_id(self, kind: str) -> str:
        return f"{kind}{next(self._ids)}-{self.instance}"

    async def _on_connection(self, conn: Connection) -> None:
        task = asyncio.current_task()
        self._conns.add(conn)
        if task is not None:
            self._conn_tasks.add(task)
        try:
            await self._greet(conn)
        finally:
            self._conns.discard(conn)
            self._conn_tasks.discard(task)  # type: ignore[arg-type]

    async def _greet(self, conn: Connection) -> None:
        register: codec.Message | None = None
        try:
            # One budget for the whole greeting: the handshake and, for a device, its register.
            async with asyncio.timeout(self.handshake_timeout):
                role, version = await auth.accept(conn, self._token, timeout=self.handshake_timeout)
                conn.limits = codec.Limits()  # authenticated: artifacts may now flow
                if role == "device":
                    register = await conn.recv()
        except (RpcError, TimeoutError) as e:
            self.stats["bad_connections"] += 1
            why = f"no handshake within {self.handshake_timeout:.1f}s" if isinstance(e, TimeoutError) else str(e)
            self._refusals.warning(conn.peer, "refused %s: %s", conn.peer, why)
            return
        peer = Peer(conn, version=version)
        writer = asyncio.create_task(peer.writer())
        try:
            if register is not None:
                await self._serve_device(peer, register)
            else:
                await self._serve_client(peer)
        finally:
            writer.cancel()

    async def _serve_device(self, peer: Peer, msg: codec.Message) -> None:
        if msg.op != "register":
            raise ProtocolError(f"a device must send 'register' first, not {msg.op!r:.40}")
        try:
            h = fields.validate(fields.DEVICE_OPS, msg.op, msg.header)
        except BadRequest as e:  # answered, then dropped: a device we cannot describe is not served
            await peer.conn.send({"op": "error", "error": to_wire(e)})
            raise ProtocolError(f"refused register: {e}") from None
        device_id = self._new_id("dev")
        name = h["name"] or device_id
        peer.has = set(h["artifacts"])
        self.devices[device_id] = peer
        peer.post({"op": "registered", "device_id": device_id, "heartbeat_s": self.heartbeat_s})
        log.info("device %s (%s) registered key %r capacity %d", device_id, name, h["key"], h["capacity"])
        actions = self.queue.add_device(device_id, h["key"], time.monotonic(), h["capacity"], h["fingerprint"], name)
        self.view.device_joined(device_id, self.queue.devices[device_id])
        self._apply(actions)
        reason = "connection closed"
        try:
            while True:
                # Devices heartbeat every heartbeat_s; silence past 3 beats is a loss.
                msg = await peer.conn.recv(idle_timeout=3 * self.heartbeat_s)
                handler = self._device_ops.get(msg.op)
                if handler is None:
                    raise ProtocolError(f"unknown device op {msg.op!r:.40}")
                try:
                    checked = fields.validate(fields.DEVICE_OPS, msg.op, msg.header)
                except BadRequest as e:  # answered; the device stays (its heartbeats were fine)
                    self._refusals.warning(peer.conn.peer, "device %s: %s", device_id, e)
                    peer.post({"op": "error", "error": to_wire(e)})
                    job_id = msg.header.get("job_id")
                    if msg.op == "result" and isinstance(job_id, str):  # its client hears why, not silence
                        error = {"type": "BadRequest", "message": f"device {name} sent an unusable result: {e}"}
                        self._apply(self.queue.refuse(device_id, job_id, error, time.monotonic()))
                    continue
                handler(device_id, peer, codec.Message(checked, msg.blobs))
        except (ConnectionLost, ProtocolError) as e:
            reason = str(e)
            raise
        finally:
            del self.devices[device_id]
            log.info("device %s gone: %s", device_id, reason)
            now = time.monotonic()
            actions = self.queue.remove_device(device_id, now, reason)
            self.view.device_lost(device_id, reason, actions, now)
            self._apply(actions)

    async def _serve_client(self, peer: Peer) -> None:
        client_id = self._new_id("cl")
        self.clients[client_id] = peer
        try:
            while True:
                msg = await peer.conn.recv(idle_timeout=None)  # clients may wait long for results
                rid = fields.rid_of(msg.header)
                handler = self._client_ops.get(msg.op)
                try:
                    if handler is None:
                        raise BadRequest(f"unknown op {msg.op!r:.40}")
                    # Every field checked against the table before the handler sees any of it.
                    checked = codec.Message(fields.validate(fields.CLIENT_OPS, msg.op, msg.header), msg.blobs)
                    try:
                        reply = await handler(client_id, peer, checked)
                    except (TypeError, ValueError, OverflowError) as e:  # a check the table cannot express
                        raise BadRequest(f"bad {msg.op!r:.40} request: {e}") from None
                except RpcError as e:
                    peer.post({"op": "error", "rid": rid, "error": to_wire(e)})
                    continue
                if reply is not None:
                    peer.post({"op": "reply", "rid": rid, **reply})
        finally:
            del self.clients[client_id]
            for lease_id in [le for le, (c, _) in self.lease_rids.items() if c == client_id]:
                del self.lease_rids[lease_id]
            self.view.client_gone(client_id, time.monotonic())
            self._apply(self.queue.client_gone(client_id, time.monotonic()))

    # ---- device ops ----------------------------------------------------
    def _on_heartbeat(self, device_id: str, peer: Peer, msg: codec.Message) -> None:
        self.queue.heartbeat(device_id, time.monotonic())
        peer.post({"op": "heartbeat_ack"})

    def _on_result(self, device_id: str, peer: Peer, msg: codec.Message) -> None:
        job_id, result = msg.header["job_id"], msg.header["result"]
        self._note(device_id, job_id, result["outcome"], result.get("message", ""))
        self._apply(self.queue.finish(device_id, job_id, result, time.monotonic()))

    def _note(self, device_id: str, job_id: str, outcome: str, message: str) -> None:
        """Count a job's outcome for the page (only a report the scheduler will accept, not a stale one)."""
        job = self.queue.jobs.get(job_id)
        if job is not None and job.device_id == device_id:
            self.view.result(device_id, job.spec.client_id, outcome, message)

    def _on_refused(self, device_id: str, peer: Peer, msg: codec.Message) -> None:
        """The device refused a job (or something else we sent): the job's client hears why."""
        err, job_id = msg.header["error"], msg.header.get("job_id")
        self._refusals.warning(peer.conn.peer, "device %s refused %s: %s: %s", device_id, job_id or "a message",
                               err["type"], err["message"][:300])
        if job_id is not None:
            self._note(device_id, job_id, err["type"], err["message"])
            error = {"type": err["type"], "message": f"device refused the job: {err['message']}"}
            self._apply(self.queue.refuse(device_id, job_id, error, time.monotonic()))

    def _on_need_artifact(self, device_id: str, peer: Peer, msg: codec.Message) -> None:
        job_id = msg.header["job_id"]
        job = self.queue.jobs.get(job_id)
        if job is not None and job.device_id == device_id and job_id in self.payloads:
            peer.has.discard(msg.header["hash"])  # it evicted it (the job's artifact or its reference)
            peer.has.discard(self.payloads[job_id].artifact["hash"])
            self._dispatch(Dispatch(device_id, job_id))

    # ---- client ops ----------------------------------------------------
    async def _op_ping(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        return {}

    async def _op_has(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        return {"has": [h for h in msg.header["hashes"] if h in self.store]}

    async def _op_put(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        """Keep an artifact a later job names as its reference (its code is the one blob)."""
        if len(msg.blobs) != 1:
            raise BadRequest("put: send the artifact's code as the one blob")
        art_hash = checked_hash(msg.header["artifact"], msg.blobs[0])
        if art_hash not in self.store:
            self.stats["client_uploads"] += 1
            self.stats["client_upload_bytes"] += len(msg.blobs[0])
        self.store.put(art_hash, msg.blobs[0])
        self.ref_headers[art_hash] = msg.header["artifact"]
        return {}

    async def _op_submit(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any] | None:
        h = msg.header  # checked: rpc.fields.CLIENT_OPS["submit"]
        key, artifact, options = h["key"], h["artifact"], h["options"]
        if msg.blobs:
            art_hash = checked_hash(artifact, msg.blobs[0])
            code = msg.blobs[0]
            if art_hash not in self.store:
                self.stats["client_uploads"] += 1
                self.stats["client_upload_bytes"] += len(code)
            self.store.put(art_hash, code)
        else:
            art_hash = artifact["hash"]
            stored = self.store.get(art_hash)
            if stored is None:
                raise ArtifactMissing(f"tracker does not hold artifact {art_hash[:12]}...; send its code")
            code = stored
        reference = reference_of(self.store, artifact, h.get("reference"))
        timeout_s = float(options.get("timeout_s", 30.0))
        queue_timeout = h.get("queue_timeout_s")
        now = time.monotonic()
        job_id = self._new_id("job")
        spec = JobSpec(
            job_id=job_id,
            key=key,
            client_id=client_id,
            priority=h["priority"],
            queue_deadline=None if queue_timeout is None else now + float(queue_timeout),
            run_budget_s=timeout_s + RUN_GRACE_S,
            lease_id=h.get("lease_id"),
        )
        self.payloads[job_id] = Payload(artifact, code, options, reference)
        self.stats["jobs_submitted"] += 1
        # Reply before applying, so the client knows the id before the result can arrive.
        peer.post({"op": "reply", "rid": h.get("rid"), "job_id": job_id})
        self._apply(self.queue.submit(spec, now))
        return None

    async def _op_lease(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any] | None:
        h = msg.header  # checked: rpc.fields.CLIENT_OPS["lease"]
        timeout = h.get("queue_timeout_s")
        now = time.monotonic()
        lease_id = self._new_id("lease")
        self.lease_rids[lease_id] = (client_id, h.get("rid"))
        deadline = None if timeout is None else now + float(timeout)
        self._apply(self.queue.request_lease(lease_id, client_id, h["key"], now, h["priority"], deadline))
        return None  # answered by LeaseGranted / LeaseFailed

    async def _op_release(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        lease_id = msg.header["lease_id"]
        lease = self.queue.leases.get(lease_id)
        if lease is None or lease.client_id != client_id:
            raise NoSuchLease(f"no lease {lease_id!r:.40} held by this client")
        self._apply(self.queue.release_lease(lease_id, time.monotonic()))
        return {}

    def summary(self) -> dict[str, Any]:
        """What `farm query --json` prints and /api/summary serves (keys documented in PROTOCOL.md)."""
        now = time.monotonic()
        s = self.queue.summary(now)
        s["stats"] = dict(self.stats, artifacts=len(self.store), artifact_bytes=self.store.nbytes,
                          clients=len(self.clients))
        return self.view.extend_summary(s, now)

    async def _op_summary(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        return {"summary": self.summary()}

    async def _op_campaign_report(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        self.view.campaign_report(client_id, msg.header, peer.conn.peer, time.monotonic())
        return {}

    async def _op_describe(self, client_id: str, peer: Peer, msg: codec.Message) -> dict[str, Any]:
        devs = [d for d in self.queue.devices.values() if d.key == msg.header["key"]]
        return {"devices": [{"name": d.name, "fingerprint": d.fingerprint} for d in devs]}

    # ---- actions -------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                self._dispatch(a)
            elif isinstance(a, JobDone):
                self.payloads.pop(a.job_id, None)
                self._to_client(a.client_id, {"op": "job_done", "job_id": a.job_id, "result": a.result})
            elif isinstance(a, JobFailed):
                self.payloads.pop(a.job_id, None)
                self._to_client(a.client_id, {"op": "job_failed", "job_id": a.job_id, "error": a.error})
            elif isinstance(a, LeaseGranted):
                _, rid = self.lease_rids.pop(a.lease_id, (None, None))
                fp = self.queue.devices[a.device_id]
                self._to_client(a.client_id, {"op": "reply", "rid": rid, "lease_id": a.lease_id,
                                              "device": {"name": fp.name, "fingerprint": fp.fingerprint}})
            elif isinstance(a, LeaseFailed):
                pending = self.lease_rids.pop(a.lease_id, None)
                if pending is not None:  # never granted: answer the lease request itself
                    self._to_client(a.client_id, {"op": "error", "rid": pending[1], "error": a.error})
                else:
                    self._to_client(a.client_id, {"op": "lease_lost", "lease_id": a.lease_id, "error": a.error})
            elif isinstance(a, DropDevice):
                peer = self.devices.get(a.device_id)
                log.warning("dropping device %s: %s", a.device_id, a.reason)
                if peer is not None:
                    peer.conn.abort()

    def _dispatch(self, a: Dispatch) -> None:
        refusal = send_job(self.devices[a.device_id], a.device_id, a.job_id, self.payloads[a.job_id], self.stats)
        if refusal is not None:  # the device cannot run it: its result comes next turn, as if it had
            asyncio.get_running_loop().call_soon(
                lambda: self._apply(self.queue.finish(a.device_id, a.job_id, refusal, time.monotonic())))

    def _to_client(self, client_id: str, header: dict[str, Any]) -> None:
        peer = self.clients.get(client_id)
        if peer is not None:
            peer.post(header)
