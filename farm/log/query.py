"""Queries over shared-log records: best, top-k, history, resume.

A workload filter is either a name (``matmul``: every shape) or an instance
id (``matmul(256,256,256)``); ``args`` narrows a name to one shape.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

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
