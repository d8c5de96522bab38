"""Client side of the tracker protocol: an asyncio core and a thread-backed sync facade.

Requests carry a ``rid`` and are matched to ``reply``/``error``; a remote error
is re-raised here as its own type (``rpc.errors.from_wire``). Job results
arrive as ``job_done``/``job_failed`` and resolve per-job futures.

Artifacts are content-addressed: before uploading, the client asks the tracker
(``has``) whether it already holds the hash, and remembers what it sent, so
the same code crosses the wire once. Results are plain MeasureResult JSON
dicts here; ``farm.client_api`` turns them into records (rpc/ does not import
farm).
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

from rpc import auth, codec
from rpc.errors import ArtifactMissing, ConnectionLost, ProtocolError, RpcError, from_wire
from rpc.transport import Connection, open_connection, parse_address

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    @classmethod
    async def connect(
        cls, address: str, token: bytes, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
    ) -> AsyncClient:
        host, port = parse_address(address)
        conn = await open_connection(host, port, timeout=timeout, ssl_context=ssl_context)
        try:
            await auth.dial(conn, token, "client", timeout=timeout)
        except BaseException:
            conn.abort()
            raise
        conn.limits = codec.Limits()
        return cls(conn)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        err: RpcError
        try:
            while True:
                msg = await self.conn.recv()
                h = msg.header
                if msg.op in ("reply", "error"):
                    fut = self._calls.pop(h.get("rid"), None)  # type: ignore[arg-type]
                    if "job_id" in h and msg.op == "reply":
                        self._jobs.setdefault(h["job_id"], loop.create_future())
                    if fut is not None and not fut.done():
                        if msg.op == "reply":
                            fut.set_result(h)
                        else:
                            fut.set_exception(from_wire(h.get("error")))
                elif msg.op in ("job_done", "job_failed"):
                    job = self._jobs.setdefault(str(h.get("job_id")), loop.create_future())
                    if not job.done():
                        if msg.op == "job_done":
                            job.set_result(h.get("result") or {})
                        else:
                            job.set_exception(from_wire(h.get("error")))
                elif msg.op == "lease_lost":
                    self.lost_leases[str(h.get("lease_id"))] = str((h.get("error") or {}).get("message", ""))
                else:
                    log.warning("ignoring unexpected %r from tracker", msg.op)
        except (RpcError, OSError) as e:
            err = e if isinstance(e, RpcError) else ConnectionLost(str(e))
        except asyncio.CancelledError:
            err = ConnectionLost("client closed")
        self._closed_error = err
        for fut in [*self._calls.values(), *self._jobs.values()]:
            if not fut.done():
                fut.set_exception(ConnectionLost(f"tracker connection lost: {err}"))
        self.conn.abort()

    async def call(
        self, op: str, blobs: tuple[bytes, ...] = (), timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """One request/response; raises the remote error's own type."""
        if self._closed_error is not None:
            raise ConnectionLost(f"tracker connection lost: {self._closed_error}")
        rid = next(self._rids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            await self.conn.send({"op": op, "rid": rid, **fields}, blobs)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._calls.pop(rid, None)

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
    ) -> str:
        """Queue one job; returns its id (await ``result(job_id)``)."""
        art_hash = artifact.get("hash")
        if not isinstance(art_hash, str):
            raise ProtocolError("artifact header has no hash")
        if art_hash not in self._known and art_hash in (await self.call("has", hashes=[art_hash]))["has"]:
            self._known.add(art_hash)
        fields = dict(key=key, artifact=artifact, options=options or {}, priority=priority,
                      queue_timeout_s=queue_timeout_s, lease_id=lease_id)
        try:
            reply = await self.call("submit", () if art_hash in self._known else (code,), **fields)
        except ArtifactMissing:  # the tracker evicted it since: send it after all
            reply = await self.call("submit", (code,), **fields)
        self._known.add(art_hash)
        return str(reply["job_id"])

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
    """Blocking facade over AsyncClient; its event loop runs in a daemon thread."""

    def __init__(
        self, address: str, token: bytes, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-rpc-client", daemon=True)
        self._thread.start()
        try:
            self._async: AsyncClient = self._run(
                AsyncClient.connect(address, token, ssl_context=ssl_context, timeout=timeout)
            )
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(
        self, artifact: dict[str, Any], code: bytes, key: str, options: dict[str, Any] | None = None, **kw: Any
    ) -> str:
        return self._run(self._async.submit(artifact, code, key, options, **kw))

    def result_future(self, job_id: str) -> concurrent.futures.Future[dict[str, Any]]:
        return asyncio.run_coroutine_threadsafe(self._async.result(job_id), self._loop)

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
        """Drop the connection now: pending calls and job results fail with ConnectionLost."""
        self._loop.call_soon_threadsafe(self._async.conn.abort)

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Any named request (e.g. ``log_query``); returns the reply's fields."""
        return self._run(self._async.call(op, timeout=timeout, **fields))

    @property
    def lost_leases(self) -> dict[str, str]:
        return self._async.lost_leases

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
