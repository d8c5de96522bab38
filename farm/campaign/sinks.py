"""Where a campaign's records go and where it resumes from: a file, or the farm's shared log.

A campaign either owns a log file (``FileSink``: it is that file's one writer)
or, when its log is ``tracker``, sends its records to the tracker that keeps
the farm's shared log (``TrackerSink``) and resumes from the tracker's answer
to a history query. The driver sees only :class:`RecordSink`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from farm.log import LogRecord, LogWriter, load_log

log = logging.getLogger(__name__)

TRACKER_LOG = "tracker"  # `log: tracker` in a campaign (or `--log tracker`) names the farm's shared log


class RecordWriter(Protocol):
    def append(self, records: Iterable[LogRecord]) -> int: ...

    def __enter__(self) -> RecordWriter: ...

    def __exit__(self, *exc: object) -> None: ...


class RecordSink(Protocol):
    """Loads the records a campaign resumes from, and opens the writer it appends to."""

    def load(self) -> list[LogRecord]: ...

    def open(self) -> RecordWriter: ...


class FileSink:
    """A local JSON-lines log that this campaign is the one writer of."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[LogRecord]:
        return load_log(self.path).records

    def open(self) -> LogWriter:
        return LogWriter(self.path)  # makes the parent directory and takes the writer lock

    def __str__(self) -> str:
        return str(self.path)


class TrackerSink:
    """The farm's shared log on the tracker (``farm tracker --log PATH``).

    Resuming asks for the history of each of the campaign's workloads (all
    shapes and devices: its own records to skip, the others for transfer);
    appends go as one ``log_append`` per flushed batch, so a batch is in the
    log or refused whole.

    ``session`` may be a callable returning the current session: the driver
    re-dials a restarted tracker, and records kept back while it was away
    (a lost connection) go out with the next append.
    """

    def __init__(self, session: Any, workloads: Sequence[str], address: str = "",
                 spill: str | Path | None = None) -> None:
        self._session: Callable[[], Any] = session if callable(session) else (lambda: session)
        self.workloads = tuple(dict.fromkeys(workloads))
        self.address = address
        self.spill = Path(spill) if spill else None
        self.unsent: list[LogRecord] = []

    def load(self) -> list[LogRecord]:
        out: list[LogRecord] = []
        for name in self.workloads:
            for recs in self._session().log_query("history", workload=name).values():
                out.extend(recs)
        log.info("shared log on the tracker: %d records of %s", len(out), ", ".join(self.workloads))
        return out

    def open(self) -> TrackerSink:
        return self

    def append(self, records: Iterable[LogRecord]) -> int:
        from rpc.errors import ConnectionLost

        self.unsent.extend(records)
        if not self.unsent:
            return 0
        try:
            n = int(self._session().log_append(self.unsent))
        except ConnectionLost as e:  # the tracker is away: keep them for the next append
            log.warning("shared log: %d record(s) kept back, tracker unreachable: %s", len(self.unsent), e)
            return 0
        self.unsent = []
        return n

    def __enter__(self) -> TrackerSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.unsent:
            self.append([])
        if self.unsent and self.spill is not None:
            # Never lose a measurement: what the tracker never took goes to a local file.
            with LogWriter(self.spill) as w:
                w.append(self.unsent)
            log.warning("shared log: %d record(s) the tracker never took written to %s", len(self.unsent), self.spill)
            self.unsent = []

    def __str__(self) -> str:
        return f"tracker {self.address}".strip()
