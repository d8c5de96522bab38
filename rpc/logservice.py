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

# The biggest batch one append may carry; a campaign flushes per batch of jobs.
MAX_APPEND = 10_000
QUERY_KINDS = ("best", "top_k", "history", "measured", "records")



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

        raw = msg.header.get("records")
        if not isinstance(raw, list):
            raise BadRequest("'log_append' needs a list of records")
        if len(raw) > MAX_APPEND:
            raise BadRequest(f"'log_append' carries {len(raw)} records; at most {MAX_APPEND} per batch")
        parsed: list[LogRecord] = []
        for n, d in enumerate(raw):
            try:
                if not isinstance(d, dict):
                    raise TypeError(f"expected an object, got {type(d).__name__}")
                parsed.append(LogRecord.from_json(d))
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise BadRequest(f"record {n} is malformed: {type(e).__name__}: {e}"[:500]) from None
        async with self._lock:
            await asyncio.to_thread(self._writer.append, parsed)
            self.records.extend(parsed)
        return {"appended": len(parsed), "total": len(self.records)}

    async def _op_query(self, client_id: str, peer: Any, msg: Any) -> dict[str, Any]:
        from farm.log import query as logquery

        h = msg.header
        kind = h.get("kind")
        if kind not in QUERY_KINDS:
            raise BadRequest(f"'log_query' kind must be one of {', '.join(QUERY_KINDS)}, got {kind!r:.40}")
        workload, device, args = h.get("workload"), h.get("device"), h.get("args")
        for name, val in (("workload", workload), ("device", device)):
            if val is not None and not isinstance(val, str):
                raise BadRequest(f"'log_query' {name} must be a string")
        if args is not None and (not isinstance(args, list) or not all(isinstance(a, int) for a in args)):
            raise BadRequest("'log_query' args must be a list of integers")
        recs = self.records
        if kind == "best":
            r = logquery.best(recs, workload=workload, device=device, args=args)
            return {"records": [] if r is None else [r.to_json()]}
        if kind == "top_k":
            k = h.get("k", 10)
            if not isinstance(k, int) or k < 0:
                raise BadRequest("'log_query' k must be a non-negative integer")
            return {"records": [r.to_json() for r in logquery.top_k(recs, k, workload=workload, device=device,
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
