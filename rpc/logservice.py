"""The farm's shared log, kept by the tracker: ``log_append`` and ``log_query`` ops.

With ``farm tracker --log PATH`` the tracker is the one writer of PATH (a
``farm.log.LogWriter`` holds its flock for the tracker's lifetime). Clients
send measurement records as JSON objects; each is validated with
``LogRecord.from_json`` before anything is written, so one malformed record
refuses the whole batch (BadRequest) and the log never holds half a batch.
Queries run over an in-memory copy of the records (loaded once at start,
extended on each append) and answer with record JSON.

``farm.log`` is imported here, so this module is imported lazily by the
tracker only when a log is configured: a plain tracker imports no ``farm``.
``farm.log`` itself pulls in no numpy/llvmlite.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rpc.errors import BadRequest, RpcError

if TYPE_CHECKING:
    from farm.log import LogRecord

log = logging.getLogger(__name__)


class SharedLogError(RpcError):
    """The tracker cannot keep the shared log (another writer holds it, unreadable path)."""


Handler = Callable[[str, Any, Any], Awaitable[dict[str, Any] | None]]


class LogService:
    """Owns the writer of one log file and answers appends and queries."""

    def __init__(self, path: str) -> None:
        from farm.log import LogError, LogWriter, load_log

        self.path = path
        # Take the writer lock first: a second tracker on the same file fails here, before loading.
        try:
            self._writer = LogWriter(path)
        except (LogError, OSError) as e:
            raise SharedLogError(f"shared log {path}: {e}") from e
        loaded = load_log(path)
        self.records: list[LogRecord] = loaded.records
        self.skipped = len(loaded.skipped)
        # Appends are written from a worker thread (fsync must not stall the event
        # loop); the lock keeps batches whole and in arrival order.
        self._lock = asyncio.Lock()
        log.info("shared log %s: %d records (%d lines skipped)", path, len(self.records), self.skipped)

    def ops(self) -> dict[str, Handler]:
        return {"log_append": self._op_append, "log_query": self._op_query}

    def close(self) -> None:
        self._writer.close()

    # ---- ops -------------------------------------------------------------
    async def _op_append(self, client_id: str, peer: Any, msg: Any) -> dict[str, Any]:
        from farm.log import LogRecord

        # Each record's fields were checked against rpc.fields.LOG_RECORD (at most MAX_APPEND of
        # them); what the table cannot say (a schema version from the future) LogRecord says here.
        parsed: list[LogRecord] = []
        for n, d in enumerate(msg.header["records"]):
            try:
                parsed.append(LogRecord.from_json(d))
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise BadRequest(f"log_append: records[{n}] is malformed: {type(e).__name__}: {e}"[:500]) from None
        async with self._lock:
            await asyncio.to_thread(self._writer.append, parsed)
            self.records.extend(parsed)
        return {"appended": len(parsed), "total": len(self.records)}

    async def _op_query(self, client_id: str, peer: Any, msg: Any) -> dict[str, Any]:
        from farm.log import query as logquery

        h = msg.header  # checked: rpc.fields.CLIENT_OPS["log_query"]
        kind, workload, device, args = h["kind"], h.get("workload"), h.get("device"), h.get("args")
        recs = self.records
        if kind == "best":
            r = logquery.best(recs, workload=workload, device=device, args=args)
            return {"records": [] if r is None else [r.to_json()]}
        if kind == "top_k":
            return {"records": [r.to_json() for r in logquery.top_k(recs, h["k"], workload=workload, device=device,
                                                                     args=args)]}
        if kind == "records":  # every record matching the filters, any outcome, in log order
            return {"records": [r.to_json() for r in recs
                                if logquery.matches(r, workload=workload, device=device, args=args)]}
        if not workload:
            raise BadRequest(f"'log_query' kind {kind!r} needs a workload")
        if kind == "history":
            hist = logquery.history(recs, workload, args=args, exclude_device=h.get("exclude_device"))
            return {"history": {dev: [r.to_json() for r in rs] for dev, rs in hist.items()}}
        if not device:
            raise BadRequest("'log_query' kind 'measured' needs a device")
        return {"indices": sorted(logquery.measured_indices(recs, workload, device, args=args))}
