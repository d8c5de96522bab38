"""Queries over shared-log records: best, top-k, history, resume.

A workload filter is either a name (``matmul``: every shape) or an instance
id (``matmul(256,256,256)``); ``args`` narrows a name to one shape.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from farm.records.identity import Machine

if TYPE_CHECKING:
    from farm.log.store import LogRecord

# (workload name, compute hash or "", args, device key): two user kernels of one name differ by hash
TaskKey = tuple[str, str, tuple[int, ...], str]


def matches(r: LogRecord, workload: str | None = None, device: str | None = None,
            args: Sequence[int] | None = None, workload_hash: str | None = None) -> bool:
    """``workload``: a name, ``name(shape)``, ``name@hash`` or ``name@hash(shape)``; ``workload_hash``:
    exactly this compute ("" for built-ins, whose records carry none)."""
    if workload:
        name, _, tag = workload.partition("@")
        if tag:
            h, _, shape = tag.partition("(")
            if not r.workload_hash.startswith(h) or (shape and r.workload_id != f"{name}({shape}"):
                return False
            if name != r.workload:
                return False
        elif workload not in (r.workload, r.workload_id):
            return False
    if workload_hash is not None and r.workload_hash != workload_hash:
        return False
    if args is not None and tuple(int(a) for a in args) != r.args:
        return False
    return not device or r.device_key == device


def _ok(records: Iterable[LogRecord], **flt: object) -> list[LogRecord]:
    return [r for r in records if r.ok and r.costs and matches(r, **flt)]  # type: ignore[arg-type]


def rank(r: LogRecord) -> tuple[float, float]:
    """Sort key, best first. Within a task (fixed flops) this is time; a kernel without arithmetic
    (a transpose, a copy: 0 GFLOPS) is ranked by time alone, so it has a best too. Across tasks the
    higher GFLOPS wins."""
    return (-r.gflops, r.median_s)


def best(records: Iterable[LogRecord], workload: str | None = None, device: str | None = None,
         args: Sequence[int] | None = None, workload_hash: str | None = None) -> LogRecord | None:
    """The fastest successful record matching the filters, or None."""
    ok = _ok(records, workload=workload, device=device, args=args, workload_hash=workload_hash)
    return min(ok, key=rank) if ok else None


def best_per_task(records: Iterable[LogRecord], workload: str | None = None,
                  device: str | None = None) -> dict[TaskKey, LogRecord]:
    """The fastest successful record per (workload instance, compute hash, device key)."""
    out: dict[TaskKey, LogRecord] = {}
    for r in _ok(records, workload=workload, device=device):
        k = r.task_key
        if k not in out or rank(r) < rank(out[k]):
            out[k] = r
    return out


def top_k(records: Iterable[LogRecord], k: int, workload: str | None = None, device: str | None = None,
          args: Sequence[int] | None = None, workload_hash: str | None = None) -> list[LogRecord]:
    """The k fastest distinct configs (best measurement of each), fastest first."""
    by_cfg: dict[tuple[tuple[str, str, tuple[int, ...], str], int], LogRecord] = {}
    for r in _ok(records, workload=workload, device=device, args=args, workload_hash=workload_hash):
        key = (r.task_key, r.config_index)
        if key not in by_cfg or rank(r) < rank(by_cfg[key]):
            by_cfg[key] = r
    return sorted(by_cfg.values(), key=rank)[: max(0, k)]


def history(records: Iterable[LogRecord], workload: str, args: Sequence[int] | None = None,
            exclude_device: str | None = None) -> dict[str, list[LogRecord]]:
    """Every record of a workload (any outcome) grouped by device key, in log
    order: the material for transfer learning across devices and shapes."""
    out: dict[str, list[LogRecord]] = defaultdict(list)
    for r in records:
        if matches(r, workload=workload, args=args) and r.device_key != exclude_device:
            out[r.device_key].append(r)
    return dict(out)


def measured_indices(records: Iterable[LogRecord], workload: str, device_key: str,
                     args: Sequence[int] | None = None, workload_hash: str | None = None) -> set[int]:
    """Config indices already measured (any outcome) for a task: what a resumed
    campaign must not measure again. Failures count: re-measuring a crash wastes
    a device slot just as much."""
    return {r.config_index for r in records
            if matches(r, workload=workload, device=device_key, args=args, workload_hash=workload_hash)}


def machines_by_key(records: Iterable[LogRecord]) -> dict[str, Counter[Machine]]:
    """How many of the records each machine measured, per device key (fingerprints decide)."""
    out: dict[str, Counter[Machine]] = defaultdict(Counter)
    for r in records:
        out[r.device_key][Machine.of(r.fingerprint)] += 1
    return dict(out)


def mixed_machines(records: Iterable[LogRecord]) -> dict[str, list[tuple[Machine, int]]]:
    """Device keys whose records two or more known machines measured: each machine and its count,
    most records first (unknown last). Records without a fingerprint are listed, but never make a key mixed alone:
    they may come from either machine."""
    out = {}
    for key, counts in machines_by_key(records).items():
        if sum(1 for m in counts if m.known) > 1:
            out[key] = sorted(counts.items(), key=lambda mc: (not mc[0].known, -mc[1], mc[0].identity))
    return out


def mixed_machine_warnings(records: Iterable[LogRecord]) -> list[str]:
    """One line per device key whose records come from several machines, naming each and its count."""
    lines = []
    for key, machines in sorted(mixed_machines(records).items()):
        listed = ", ".join(f"{m} ({n} record{'s' if n != 1 else ''})" for m, n in machines)
        lines.append(f"device key {key!r}: the {sum(n for _, n in machines)} records compared come from "
                     f"{len(machines)} machines: {listed}; their timings are not comparable "
                     f"(give each machine its own device key)")
    return lines
