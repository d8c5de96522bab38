"""A tracker session that outlives the tracker: re-dial, resubmit, and report lost leases.

The tracker keeps its queue in memory, so a restart forgets every job it held and
breaks every connection. ``RedialClient`` holds one ``AsyncClient`` at a time. When
that connection is lost it re-dials with jittered exponential backoff for up to
``max_outage_s`` (``rpc.client.MAX_OUTAGE_S``, the bound campaigns use too), then
resubmits every job whose result never arrived, at most ``MAX_RESUBMITS`` times each.
It re-dials only after a first session that worked: the first dial is the caller's,
so an unreachable tracker at start fails at once.

Callers hold *tickets*: the id a job got at its first submission. A resubmitted job
gets a new id from the new tracker (ids carry the tracker instance's tag, so an old
id never names a new job) but keeps its ticket, and its result resolves the ticket
once: results arrive only on the connection that submitted the job, and a ticket
follows one connection at a time.

Leases do not survive: the new tracker never granted them and another client may
hold that device by now. A lease held across a lost connection is reported lost
(``lost_leases``), its jobs fail with NoSuchLease, and it is never re-acquired
behind the caller's back.

``max_outage_s=0`` turns all this off: a lost connection fails every call and job at
once with ConnectionLost (the campaign driver re-dials by itself, farm.campaign.link).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rpc.errors import AuthError, ConnectionLost, NoSuchLease, RpcError, VersionMismatch
from rpc.transport import backoff_delays

if TYPE_CHECKING:
    from rpc.client import AsyncClient

log = logging.getLogger(__name__)

MAX_RESUBMITS = 5  # a job whose every submission ends in a lost connection stops here
# Calls that may be sent again on a new connection: they change nothing, or (lease) the
# caller never got what the lost one asked for. log_append is not among them: a batch
# whose reply was lost may have been written.
RETRY_OPS = frozenset({"ping", "has", "summary", "describe", "log_query", "lease"})


@dataclass(eq=False)
class _Ticket:
    ticket: str
    request: dict[str, Any]  # AsyncClient.submit's arguments
    future: asyncio.Future[dict[str, Any]]
    job_id: str  # the id on the connection it currently follows
    gen: int  # which connection that is
    resubmits: int = 0


def _again(err: RpcError) -> RpcError:
    """A fresh copy (attributes such as RemoteError.remote_type included), so that each
    waiter's traceback is its own."""
    try:
        fresh = type(err)(*err.args)
    except TypeError:
        return err
    fresh.__dict__.update(err.__dict__)
    return fresh


class RedialClient:
    """The AsyncClient API (submit, result, call, lease, release, ...) across re-dials."""

    def __init__(self, first: AsyncClient, dial: Callable[[float], Awaitable[AsyncClient]], *, address: str,
                 max_outage_s: float, dial_timeout: float = 10.0, backoff_base: float = 0.2,
                 backoff_cap: float = 5.0) -> None:
        self._conn = first
        self._dial = dial
        self.address = address
        self.max_outage_s = max_outage_s
        self.dial_timeout = dial_timeout
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.gen = 0
        self.reconnects = 0
        self.resubmitted = 0
        self._up = asyncio.Event()  # set: connected, or given up (then _fatal says why)
        self._up.set()
        self._fatal: RpcError | None = None
        self._tickets: dict[str, _Ticket] = {}
        self._jobs: dict[str, asyncio.Future[dict[str, Any]]] = {}  # ticket -> result, until collected
        self._held: set[str] = set()  # leases granted on the current connection
        self._lost_leases: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch = asyncio.create_task(self._supervise())

    # ---- connection ----------------------------------------------------------------------
    async def _connection(self) -> AsyncClient:
        """The live connection, waiting out a re-dial; raises the reason once given up."""
        while True:
            if self._fatal is not None:
                raise _again(self._fatal)
            if self._up.is_set():
                if not self._conn.lost:
                    return self._conn
                self._up.clear()  # lost, and the supervisor has not seen it yet: wait for it
            await self._up.wait()

    async def _supervise(self) -> None:
        while True:
            err = await self._conn.wait_lost()
            if self._fatal is not None:  # closed by us
                return
            self._up.clear()
            self._drop_leases(err)
            if self.max_outage_s <= 0:
                self._give_up(ConnectionLost(f"tracker connection lost: {err}"))
                return
            log.warning("lost the tracker at %s (%s); re-dialling for up to %gs", self.address, err,
                        self.max_outage_s)
            fresh = await self._redial()
            if fresh is None:
                return
            self._conn, self.gen = fresh, self.gen + 1
            self.reconnects += 1
            log.warning("re-dialled the tracker at %s; resubmitting %d job(s) whose results never came",
                        self.address, len(self._tickets))
            self._up.set()

    async def _redial(self) -> AsyncClient | None:
        loop = asyncio.get_running_loop()
        since = loop.time()
        delays = backoff_delays(self.backoff_base, self.backoff_cap)
        last: BaseException | None = None
        while True:
            left = self.max_outage_s - (loop.time() - since)
            if left <= 0:
                self._give_up(ConnectionLost(f"the tracker at {self.address} has been unreachable for "
                                             f"{loop.time() - since:.0f}s (limit {self.max_outage_s:g}s): {last}"))
                return None
            try:
                return await self._dial(min(self.dial_timeout, left))
            except (AuthError, VersionMismatch) as e:  # it is there but will not have us: waiting will not help
                self._give_up(e)
                return None
            except (RpcError, OSError) as e:
                last = e
                log.info("re-dial of %s failed: %s", self.address, e)
            await asyncio.sleep(min(next(delays), max(0.0, left)))

    def _drop_leases(self, err: RpcError) -> None:
        self._lost_leases.update(self._conn.lost_leases)
        for lease_id in self._held:
            self._lost_leases[lease_id] = f"lost with the tracker connection ({err})"
        if self._held:
            log.warning("lease(s) %s lost with the tracker connection; not re-acquired", ", ".join(sorted(self._held)))
        self._held.clear()

    def _give_up(self, err: RpcError) -> None:
        self._fatal = err
        self._up.set()  # wake every waiter: they raise err
        for t in list(self._tickets.values()):
            self._resolve(t, err)

    # ---- jobs ----------------------------------------------------------------------------
    async def submit(self, artifact: dict[str, Any], code: bytes, key: str, options: dict[str, Any] | None = None,
                     *, priority: int = 0, queue_timeout_s: float | None = None, lease_id: str | None = None,
                     reference: tuple[dict[str, Any], bytes] | None = None) -> str:
        """Queue one job; returns its ticket (its first job id), good across re-dials."""
        if lease_id is not None and lease_id in self.lost_leases:
            raise NoSuchLease(f"lease {lease_id} was lost: {self.lost_leases[lease_id]}")
        request = dict(artifact=artifact, code=code, key=key, options=options, priority=priority,
                       queue_timeout_s=queue_timeout_s, lease_id=lease_id, reference=reference)
        conn, job_id = await self._submit(request)
        t = _Ticket(job_id, request, asyncio.get_running_loop().create_future(), job_id, self.gen)
        self._tickets[t.ticket] = t
        self._jobs[t.ticket] = t.future
        self._follow(t, conn)
        return t.ticket

    async def _submit(self, request: dict[str, Any]) -> tuple[AsyncClient, str]:
        tries = 0
        while True:
            conn = await self._connection()
            try:
                return conn, await conn.submit(**request)
            except ConnectionLost as e:
                if request["lease_id"] is not None:
                    raise NoSuchLease(f"lease {request['lease_id']} was lost with the tracker connection ({e})") \
                        from None
                if self.max_outage_s <= 0 or tries >= MAX_RESUBMITS:
                    raise
                tries += 1

    def _follow(self, t: _Ticket, conn: AsyncClient) -> None:
        job_id, gen = t.job_id, t.gen
        conn.job_future(job_id).add_done_callback(lambda f: self._job_ended(t, gen, conn, job_id, f))

    def _job_ended(self, t: _Ticket, gen: int, conn: AsyncClient, job_id: str,
                   f: asyncio.Future[dict[str, Any]]) -> None:
        conn.forget(job_id)
        if t.future.done() or t.gen != gen:
            return
        err = ConnectionLost("cancelled") if f.cancelled() else f.exception()
        if err is None:
            self._resolve(t, f.result())
        elif not isinstance(err, ConnectionLost) or self._fatal is not None or self.max_outage_s <= 0:
            self._resolve(t, err)
        elif t.request["lease_id"] is not None:
            lease = t.request["lease_id"]
            self._resolve(t, NoSuchLease(f"lease {lease} was lost with the tracker connection; job {t.ticket} "
                                         f"did not finish ({err})"))
        elif t.resubmits >= MAX_RESUBMITS:
            self._resolve(t, ConnectionLost(f"job {t.ticket}: the tracker connection was lost "
                                            f"{t.resubmits + 1} times under it ({err})"))
        else:
            task = asyncio.create_task(self._resubmit(t))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resubmit(self, t: _Ticket) -> None:
        t.resubmits += 1
        try:
            conn, job_id = await self._submit(t.request)
        except RpcError as e:
            self._resolve(t, e)
            return
        t.job_id, t.gen = job_id, self.gen
        self.resubmitted += 1
        log.info("job %s resubmitted as %s", t.ticket, job_id)
        self._follow(t, conn)

    def _resolve(self, t: _Ticket, outcome: dict[str, Any] | BaseException) -> None:
        self._tickets.pop(t.ticket, None)
        if t.future.done():
            return
        if isinstance(outcome, BaseException):
            t.future.set_exception(_again(outcome) if isinstance(outcome, RpcError) else outcome)
            t.future.exception()  # read: a job whose result nobody asked for is not an asyncio error
        else:
            t.future.set_result(outcome)

    async def result(self, ticket: str, timeout: float | None = None) -> dict[str, Any]:
        """The MeasureResult JSON of a submitted job (raises JobFailed errors by type)."""
        fut = self._jobs.get(ticket)
        if fut is None:
            raise RpcError(f"no job {ticket!r} pending on this session (unknown, or its result was collected)")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        finally:
            if fut.done():
                self._jobs.pop(ticket, None)

    # ---- calls ---------------------------------------------------------------------------
    async def call(self, op: str, blobs: tuple[bytes, ...] = (), timeout: float | None = None,
                   **request: Any) -> dict[str, Any]:
        """One request/response, waiting out a re-dial (within ``timeout``); see RETRY_OPS."""
        async with asyncio.timeout(timeout):
            while True:
                conn = await self._connection()
                try:
                    return await conn.call(op, blobs, **request)
                except ConnectionLost:
                    if self.max_outage_s <= 0 or op not in RETRY_OPS:
                        raise

    async def lease(self, key: str, *, queue_timeout_s: float | None = None, priority: int = 0) -> dict[str, Any]:
        reply = await self.call("lease", key=key, queue_timeout_s=queue_timeout_s, priority=priority)
        self._held.add(reply["lease_id"])
        return {"lease_id": reply["lease_id"], "device": reply["device"]}

    async def release(self, lease_id: str) -> None:
        if lease_id in self.lost_leases:
            raise NoSuchLease(f"lease {lease_id} was lost: {self.lost_leases[lease_id]}")
        await self.call("release", lease_id=lease_id)
        self._held.discard(lease_id)

    async def summary(self) -> dict[str, Any]:
        return dict((await self.call("summary"))["summary"])

    async def describe(self, key: str) -> list[dict[str, Any]]:
        return list((await self.call("describe", key=key))["devices"])

    @property
    def lost_leases(self) -> dict[str, str]:
        """Lease id -> why it was lost (its device, or the tracker connection)."""
        return {**self._lost_leases, **self._conn.lost_leases}

    def abort(self) -> None:
        """Drop the current connection (a tracker that stopped answering): re-dial, or fail all."""
        self._conn.conn.abort()

    async def close(self) -> None:
        self._fatal = self._fatal or ConnectionLost("client closed")
        self._up.set()
        self._watch.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._watch, *self._tasks, return_exceptions=True)
        for t in list(self._tickets.values()):
            self._resolve(t, ConnectionLost("client closed"))
        await self._conn.close()
