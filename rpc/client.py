"""Client side of the tracker protocol: an asyncio core and a thread-backed sync facade.

Requests carry a ``rid`` and are matched to ``reply``/``error``; a remote error
is re-raised here as its own type (``rpc.errors.from_wire``). Job results
arrive as ``job_done``/``job_failed`` and resolve per-job futures.

Artifacts are content-addressed: before uploading, the client asks the tracker
(``has``) whether it already holds the hash, and remembers what it sent, so
the same code crosses the wire once. Results are plain MeasureResult JSON
dicts here; ``farm.client.session`` turns them into records.

Everything the tracker sends is checked against ``rpc.fields`` before it is used.
``Client`` (the blocking facade) can outlive the tracker: with ``max_outage_s``
above 0 it re-dials after a lost connection and resubmits (``rpc.redial``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from rpc import auth, codec, fields
from rpc.errors import ArtifactMissing, BadRequest, ConnectionLost, ProtocolError, RpcError, from_wire
from rpc.ratelog import PerPeerLog
from rpc.redial import RedialClient
from rpc.transport import Connection, parse_address

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a session re-dials a tracker that went away before its calls and jobs fail.
# One setting for every client of the farm: campaigns (`farm tune --max-outage`),
# `farm measure --max-outage` and `farm.connect(max_outage_s=...)`.
MAX_OUTAGE_S = 300.0


def _is_id(v: object) -> bool:
    try:
        fields.check(fields.ID, v, "job_id")
    except BadRequest:
        return False
    return True


class AsyncClient:
    """One authenticated connection to a tracker. Create with ``AsyncClient.connect``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._rids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._jobs: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.lost_leases: dict[str, str] = {}
        self._known: set[str] = set()  # hashes the tracker holds (we sent them or it said so)
        self._reader = asyncio.create_task(self._read_loop())
        self._closed_error: RpcError | None = None
        self._complaints = PerPeerLog(log)

    @classmethod
    async def connect(
        cls, address: str, token: bytes, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
    ) -> AsyncClient:
        """Dial and authenticate within ``timeout`` seconds in all (TCP connect included)."""
        host, port = parse_address(address)
        return cls(await auth.dial_address(host, port, token, "client", ssl_context=ssl_context, timeout=timeout))

    @property
    def lost(self) -> bool:
        """The connection is gone (closed, aborted, or the tracker hung up)."""
        return self._closed_error is not None or self.conn.closed

    async def wait_lost(self) -> RpcError:
        """Wait until the connection is gone; returns why."""
        await asyncio.shield(self._reader)
        return self._closed_error or ConnectionLost("connection closed")

    def job_future(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        """The future a job's result (or failure) will resolve; ``forget`` it once it is done."""
        return self._jobs.setdefault(job_id, asyncio.get_running_loop().create_future())

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def _refused(self, msg: codec.Message, err: BadRequest) -> None:
        """A message from the tracker with a field we cannot use: fail what waits for it, or say so."""
        rid, job_id = fields.rid_of(msg.header), msg.header.get("job_id")
        waiter = self._calls.pop(rid, None) if rid is not None else None
        if waiter is None and isinstance(job_id, str) and msg.op in ("job_done", "job_failed"):
            waiter = self._jobs.get(job_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(BadRequest(f"the tracker sent {err}"))
        else:
            self._complaints.warning(self.conn.peer, "ignoring a message from tracker %s: %s", self.conn.peer, err)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        err: RpcError
        try:
            while True:
                msg = await self.conn.recv()
                try:
                    h = fields.validate(fields.TRACKER_TO_CLIENT, msg.op, msg.header)
                except BadRequest as e:
                    self._refused(msg, e)
                    continue
                if msg.op in ("reply", "error"):
                    fut = self._calls.pop(h["rid"], None) if h.get("rid") is not None else None
                    if msg.op == "reply" and _is_id(h.get("job_id")):
                        self._jobs.setdefault(h["job_id"], loop.create_future())
                    if fut is not None and not fut.done():
                        if msg.op == "reply":
                            fut.set_result(h)
                        else:
                            fut.set_exception(from_wire(h.get("error")))
                elif msg.op in ("job_done", "job_failed"):
                    job = self._jobs.setdefault(h["job_id"], loop.create_future())
                    if not job.done():
                        if msg.op == "job_done":
                            job.set_result(h["result"])
                        else:
                            job.set_exception(from_wire(h["error"]))
                else:  # lease_lost: the table knows no other op
                    self.lost_leases[h["lease_id"]] = h["error"]["message"]
        except (RpcError, OSError) as e:
            err = e if isinstance(e, RpcError) else ConnectionLost(str(e))
        except asyncio.CancelledError:
            err = ConnectionLost("client closed")
        self._closed_error = err
        for fut in [*self._calls.values(), *self._jobs.values()]:
            if not fut.done():
                fut.set_exception(ConnectionLost(f"tracker connection lost: {err}"))
                fut.exception()  # read: a job nobody waits for is no "exception never retrieved"
        self.conn.abort()

    async def call(
        self, op: str, blobs: tuple[bytes, ...] = (), timeout: float | None = None, **request: Any
    ) -> dict[str, Any]:
        """One request/response; raises the remote error's own type. The reply's fields are
        checked (``rpc.fields.REPLIES``): a field we cannot use is a BadRequest naming it."""
        if self._closed_error is not None:
            raise ConnectionLost(f"tracker connection lost: {self._closed_error}")
        rid = next(self._rids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            await self.conn.send({"op": op, "rid": rid, **request}, blobs)
            async with asyncio.timeout(timeout):
                reply = await fut
        finally:
            self._calls.pop(rid, None)
        if op not in fields.REPLIES:  # an op this side has no schema for: the caller reads it
            return reply
        try:
            return fields.validate(fields.REPLIES, op, reply)
        except BadRequest as e:
            raise BadRequest(f"the tracker's reply to {e}") from None

    async def submit(
        self,
        artifact: dict[str, Any],
        code: bytes,
        key: str,
        options: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        queue_timeout_s: float | None = None,
        lease_id: str | None = None,
        reference: tuple[dict[str, Any], bytes] | None = None,
    ) -> str:
        """Queue one job; returns its id (await ``result(job_id)``). ``reference``: the (header, code)
        of the artifact that ``artifact["reference"]`` names, uploaded once (protocol 2)."""
        art_hash = artifact.get("hash")
        if not isinstance(art_hash, str):
            raise ProtocolError("artifact header has no hash")
        wanted = [h for h in (art_hash, reference[0].get("hash") if reference else None)
                  if isinstance(h, str) and h not in self._known]
        if wanted:
            self._known.update((await self.call("has", hashes=wanted))["has"])
        request: dict[str, Any] = dict(key=key, artifact=artifact, options=options or {}, priority=priority,
                                       queue_timeout_s=queue_timeout_s, lease_id=lease_id,
                                       reference=reference[0] if reference else None)
        await self._put_reference(reference)
        try:
            reply = await self.call("submit", () if art_hash in self._known else (code,), **request)
        except ArtifactMissing:  # the tracker evicted one since: send them after all
            self._known.difference_update({art_hash, reference[0]["hash"]} if reference else {art_hash})
            await self._put_reference(reference)
            reply = await self.call("submit", (code,), **request)
        self._known.add(art_hash)
        return str(reply["job_id"])

    async def _put_reference(self, reference: tuple[dict[str, Any], bytes] | None) -> None:
        if reference is not None and reference[0]["hash"] not in self._known:
            await self.call("put", (reference[1],), artifact=reference[0])
            self._known.add(reference[0]["hash"])

    async def result(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The MeasureResult JSON of a submitted job (raises JobFailed errors by type)."""
        fut = self._jobs.setdefault(job_id, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        finally:
            if fut.done():
                self._jobs.pop(job_id, None)

    async def lease(self, key: str, *, queue_timeout_s: float | None = None, priority: int = 0) -> dict[str, Any]:
        reply = await self.call("lease", key=key, queue_timeout_s=queue_timeout_s, priority=priority)
        return {"lease_id": reply["lease_id"], "device": reply.get("device", {})}

    async def release(self, lease_id: str) -> None:
        await self.call("release", lease_id=lease_id)

    async def summary(self) -> dict[str, Any]:
        return dict((await self.call("summary"))["summary"])

    async def describe(self, key: str) -> list[dict[str, Any]]:
        return list((await self.call("describe", key=key))["devices"])

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.conn.close()


class Client:
    """Blocking facade over a tracker session; its event loop runs in a daemon thread.

    The first dial happens here and fails at once if the tracker cannot be reached. With
    ``max_outage_s`` > 0 a connection lost later is re-dialled and unfinished jobs are
    resubmitted (``rpc.redial``); with 0 (the default here, what tests and the campaign
    driver want) a lost connection fails every pending call and job with ConnectionLost.
    ``farm.connect`` passes ``MAX_OUTAGE_S``.
    """

    def __init__(
        self, address: str, token: bytes, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0,
        max_outage_s: float = 0.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-rpc-client", daemon=True)
        self._thread.start()

        async def dial(budget: float) -> AsyncClient:
            return await AsyncClient.connect(address, token, ssl_context=ssl_context, timeout=budget)

        async def start() -> RedialClient:
            return RedialClient(await dial(timeout), dial, address=address, max_outage_s=max_outage_s,
                                dial_timeout=timeout)

        try:
            self._async: RedialClient = self._run(start())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._schedule(coro).result(timeout)

    def _schedule(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        # A closed session must say so, not leave a coroutine that never runs ("... was never
        # awaited" warnings, e.g. a progress read on a session the campaign already replaced).
        if self._loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise ConnectionLost("client closed")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed between the check and the call
            coro.close()
            raise ConnectionLost("client closed") from None

    def submit(
        self, artifact: dict[str, Any], code: bytes, key: str, options: dict[str, Any] | None = None, **kw: Any
    ) -> str:
        """Queue one job; returns its id (kept across re-dials, see ``rpc.redial``)."""
        return self._run(self._async.submit(artifact, code, key, options, **kw))

    def result_future(self, job_id: str) -> concurrent.futures.Future[dict[str, Any]]:
        return self._schedule(self._async.result(job_id))

    def result(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._async.result(job_id, timeout))

    def lease(self, key: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.lease(key, **kw))

    def release(self, lease_id: str) -> None:
        self._run(self._async.release(lease_id))

    def summary(self) -> dict[str, Any]:
        return self._run(self._async.summary())

    def describe(self, key: str) -> list[dict[str, Any]]:
        return self._run(self._async.describe(key))

    def ping(self, timeout: float) -> None:
        """Round trip to the tracker; TimeoutError if it does not answer in ``timeout`` s
        (a stopped or wedged tracker keeps the TCP connection open but never replies)."""
        self._run(self._async.call("ping", timeout=timeout), timeout=timeout + 1.0)

    def abort(self) -> None:
        """Drop the connection now: pending calls fail with ConnectionLost; jobs are
        resubmitted after a re-dial, or (``max_outage_s`` 0) fail with ConnectionLost too."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._async.abort)

    def call(self, op: str, timeout: float | None = None, **request: Any) -> dict[str, Any]:
        """Any named request (e.g. ``log_query``); returns the reply's fields."""
        return self._run(self._async.call(op, timeout=timeout, **request))

    @property
    def lost_leases(self) -> dict[str, str]:
        return self._async.lost_leases

    @property
    def reconnects(self) -> int:
        return self._async.reconnects

    @property
    def resubmitted(self) -> int:
        return self._async.resubmitted

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._run(self._async.close(), timeout=5)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
