"""The shared measurement log: append-only JSON lines, one record per measurement.

Each line is one :class:`LogRecord` with a schema version ``v``. There is one
writer per file (the tracker for the farm's log, a campaign for its own); it
appends whole batches, flushes and fsyncs them, and holds an exclusive
``flock`` so a second writer fails loudly instead of interleaving lines.
Readers tolerate a torn last line (a writer killed mid-batch) and any
malformed line: it is skipped and reported with its line number.

Files ending in ``.gz`` are read (and written) gzip-compressed; the committed
replay datasets use that.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from farm.errors import FarmError
from farm.records.identity import Machine
from farm.records.measure import MeasureResult, Outcome, RunOptions

log = logging.getLogger(__name__)

# 2: workload.hash (user kernels), result.checked, workload.bytes. Version 1 lines read as before.
# device.name (which server measured it) is optional and older readers ignore it: no new version.
LOG_SCHEMA_VERSION = 2


class LogError(FarmError):
    """The log cannot be opened for writing (e.g. another writer holds it)."""


@dataclass(frozen=True)
class LogRecord:
    """One measurement of one config of one workload on one device."""

    workload: str
    args: tuple[int, ...]
    target: str
    device_key: str
    config_index: int
    knobs: dict[str, Any]
    outcome: Outcome
    costs: tuple[float, ...] = ()
    gflops: float = 0.0
    message: str = ""
    number: int = 0
    timing: dict[str, Any] = field(default_factory=dict)
    build_s: float = 0.0
    timestamp: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    campaign: str = ""
    task: str = ""
    workload_hash: str = ""  # a user kernel's compute hash; "" for built-ins (known by name)
    checked: bool | None = None  # the device compared the outputs with a reference (None: not recorded)
    nbytes: int = 0  # bytes of the kernel's arguments, for GB/s
    device_name: str = ""  # the device server that measured it ("": not recorded, or no device did)

    @property
    def task_key(self) -> tuple[str, str, tuple[int, ...], str]:
        """(name, hash, shape, device key): records of one tuning task; two kernels of one name differ."""
        return (self.workload, self.workload_hash, self.args, self.device_key)

    @property
    def gbps(self) -> float:
        """Argument bytes per second of the median time, in GB/s (0 when unknown)."""
        m = self.median_s
        return self.nbytes / m / 1e9 if self.nbytes and m < float("inf") and m > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def machine(self) -> Machine:
        """The machine that measured it, from its fingerprint (unknown without one)."""
        return Machine.of(self.fingerprint)

    @property
    def workload_id(self) -> str:
        """``matmul(256,256,256)``: how tables and the CLI name a workload instance."""
        return f"{self.workload}({','.join(map(str, self.args))})"

    @property
    def workload_label(self) -> str:
        """``name@hash(shape)`` for a user kernel, ``name(shape)`` for a built-in."""
        tag = f"{self.workload}@{self.workload_hash[:8]}" if self.workload_hash else self.workload
        return f"{tag}({','.join(map(str, self.args))})"

    @property
    def config(self) -> dict[str, Any]:
        """``{"index", "knobs"}``, what ``ConfigSpace.from_json`` accepts."""
        return {"index": self.config_index, "knobs": dict(self.knobs)}

    @property
    def median_s(self) -> float:
        if not self.ok or not self.costs:
            return float("inf")
        c = sorted(self.costs)
        n = len(c)
        return c[n // 2] if n % 2 else 0.5 * (c[n // 2 - 1] + c[n // 2])

    @classmethod
    def from_measurement(cls, *, workload: str, args: Sequence[int], target: str, config: Any,
                         result: MeasureResult, options: RunOptions | None = None, device_key: str = "",
                         fingerprint: dict[str, Any] | None = None, build_s: float = 0.0,
                         campaign: str = "", task: str = "", timestamp: float | None = None,
                         workload_hash: str = "", nbytes: int = 0, device_name: str = "") -> LogRecord:
        """Build a record from a MeasureResult; ``config`` is a ConfigEntity or its JSON dict."""
        cj = config.to_json() if hasattr(config, "to_json") else dict(config)
        return cls(
            workload=workload, args=tuple(int(a) for a in args), target=str(target),
            device_key=device_key or result.device_key, config_index=int(cj["index"]),
            knobs=dict(cj.get("knobs", {})), outcome=result.outcome, costs=tuple(result.costs),
            gflops=float(result.gflops), message=result.message, number=int(result.number),
            timing=options.to_json() if options is not None else {}, build_s=float(build_s),
            timestamp=time.time() if timestamp is None else float(timestamp),
            fingerprint=dict(fingerprint or {}), campaign=campaign, task=task,
            workload_hash=workload_hash, checked=bool(result.checked), nbytes=int(nbytes),
            device_name=str(device_name),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": LOG_SCHEMA_VERSION,
            "workload": {"name": self.workload, "args": list(self.args), "dtype": self.dtype},
            "target": self.target,
            "device": {"key": self.device_key, "fingerprint": self.fingerprint},
            "config": {"index": self.config_index, "knobs": self.knobs},
            "result": {"outcome": self.outcome.value, "costs": list(self.costs), "gflops": self.gflops,
                       "message": self.message, "number": self.number},
            "timing": self.timing,
            "build_s": self.build_s,
            "timestamp": self.timestamp,
        }
        if self.device_name:
            out["device"]["name"] = self.device_name
        if self.workload_hash:
            out["workload"]["hash"] = self.workload_hash
        if self.nbytes:
            out["workload"]["bytes"] = self.nbytes
        if self.checked is not None:
            out["result"]["checked"] = self.checked
        if self.campaign:
            out["campaign"] = self.campaign
        if self.task:
            out["task"] = self.task
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LogRecord:
        """Parse one line's object; raises KeyError/ValueError/TypeError on a bad record."""
        v = int(d["v"])
        if v > LOG_SCHEMA_VERSION:
            raise ValueError(f"schema version {v} is newer than this reader's {LOG_SCHEMA_VERSION}")
        wl, dev, cfg, res = d["workload"], d.get("device", {}), d["config"], d["result"]
        return cls(
            workload=str(wl["name"]), args=tuple(int(a) for a in wl["args"]), dtype=str(wl.get("dtype", "float32")),
            target=str(d.get("target", "")), device_key=str(dev.get("key", "")),
            fingerprint=dict(dev.get("fingerprint") or {}), config_index=int(cfg["index"]),
            knobs=dict(cfg.get("knobs") or {}), outcome=Outcome(res["outcome"]),
            costs=tuple(float(c) for c in res.get("costs", ())), gflops=float(res.get("gflops", 0.0)),
            message=str(res.get("message", "")), number=int(res.get("number", 0)),
            timing=dict(d.get("timing") or {}), build_s=float(d.get("build_s", 0.0)),
            timestamp=float(d.get("timestamp", 0.0)), campaign=str(d.get("campaign", "")),
            task=str(d.get("task", "")), workload_hash=str(wl.get("hash", "")),
            checked=None if res.get("checked") is None else bool(res["checked"]), nbytes=int(wl.get("bytes", 0)),
            device_name=str(dev.get("name", "")),
        )


# --- reading -----------------------------------------------------------------

@dataclass(frozen=True)
class SkippedLine:
    """A line the reader could not use, and why."""

    path: str
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.reason}"


class LoadedLog(NamedTuple):
    records: list[LogRecord]
    skipped: list[SkippedLine]


def _open_text(path: Path, mode: str) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def load_log(path: str | os.PathLike[str]) -> LoadedLog:
    """Every well-formed record of a log, in file order, plus the lines skipped.

    A torn or malformed line is skipped with a warning naming ``file:line``;
    a missing file is an empty log (a campaign that has not measured yet).
    """
    p = Path(path)
    records: list[LogRecord] = []
    skipped: list[SkippedLine] = []
    if not p.exists():
        return LoadedLog(records, skipped)
    try:
        with _open_text(p, "r") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(LogRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    torn = "" if line.endswith("\n") else " (torn last line)"
                    skipped.append(SkippedLine(str(p), lineno, f"malformed record{torn}: {type(e).__name__}: {e}"))
                if not line.endswith("\n"):
                    # EOF as of this read. A writer may be appending right now: iterating on would
                    # return the rest of this same line as a "line" of its own, and a whole record
                    # would be reported malformed (and re-measured by a resume).
                    break
    except (EOFError, gzip.BadGzipFile) as e:
        # A gzip stream cut short: keep what decoded, say where it stopped.
        skipped.append(SkippedLine(str(p), len(records) + len(skipped) + 1, f"truncated compressed log: {e}"))
    for s in skipped:
        log.warning("skipping %s", s)
    return LoadedLog(records, skipped)


# --- writing -----------------------------------------------------------------

class LogWriter:
    """The one appender of a log file. ``append`` writes a batch, flushes, fsyncs.

    Holds an exclusive ``flock`` for its lifetime so a second writer raises
    :class:`LogError` rather than interleaving lines. If the file ends in a torn
    line (a previous writer was killed mid-write), a newline is added first so
    the torn fragment stays one bad line and the next record is intact.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._gz = self.path.suffix == ".gz"
        self._fh: Any = open(self.path, "ab")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._fh.close()
            raise LogError(f"{self.path}: another writer holds this log (one writer per file)") from e
        except ImportError:  # no flock on this platform: single-writer is then the caller's promise
            pass
        if not self._gz:
            self._repair_tail()

    def _repair_tail(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb") as r:
            r.seek(size - 1)
            if r.read(1) != b"\n":
                log.warning("%s: last line is torn; it stays in the file and readers skip it", self.path)
                self._fh.write(b"\n")
                self._fh.flush()

    def append(self, records: Iterable[LogRecord]) -> int:
        """Write one batch; returns how many records. Durable when this returns."""
        lines = [json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode()
        # Each batch is its own gzip member: concatenated members are one valid stream.
        self._fh.write(gzip.compress(data) if self._gz else data)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        return len(lines)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_log(path: str | os.PathLike[str], records: Iterable[LogRecord]) -> int:
    """Append ``records`` to ``path`` as one batch (convenience for tools and tests)."""
    with LogWriter(path) as w:
        return w.append(records)
