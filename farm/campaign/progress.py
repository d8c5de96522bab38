"""Live campaign progress: a redrawn block on a terminal, plain log lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Call with (tasks, tracker summary); writes to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self._lines = 0
        self._last_plain = 0.0
        self._finished: set[str] = set()
        self._t0 = time.monotonic()

    def __call__(self, tasks: list[Any], summary: dict[str, Any]) -> None:
        if self.tty:
            self._redraw(tasks, summary)
        else:
            self._plain(tasks, summary)

    def _task_line(self, t: Any) -> str:
        bar_w = 20
        frac = min(1.0, t.done_trials / max(1, t.budget))
        bar = "#" * int(frac * bar_w) + "." * (bar_w - int(frac * bar_w))
        # A config proposed but not started (a trials_total task's default, waiting for its grant) is not in flight.
        state = "done" if t.finished else f"{t.in_flight - len(t.pending):>2} in flight"
        return (f"{t.name:<44} [{bar}] {t.done_trials:>4}/{t.budget:<4} best {t.best_gflops:8.2f} GFLOPS  "
                f"errors {t.errors:<3} {state}")

    def _devices_line(self, summary: dict[str, Any]) -> str:
        keys = summary.get("keys") or {}
        parts = [f"{k}: {v.get('busy', 0)} busy / {v.get('free', 0)} free / {v.get('pending', 0)} queued"
                 for k, v in sorted(keys.items())]
        return "devices  " + ("; ".join(parts) if parts else "(no summary)")

    def _redraw(self, tasks: list[Any], summary: dict[str, Any]) -> None:
        lines = [self._task_line(t) for t in tasks] + [self._devices_line(summary),
                                                        f"elapsed {time.monotonic() - self._t0:6.1f}s"]
        out = ""
        if self._lines:
            out += f"\x1b[{self._lines}F"
        out += "".join(f"\x1b[2K{ln}\n" for ln in lines)
        self.stream.write(out)
        self.stream.flush()
        self._lines = len(lines)

    def _plain(self, tasks: list[Any], summary: dict[str, Any]) -> None:
        now = time.monotonic()
        newly = [t for t in tasks if t.finished and t.name not in self._finished]
        if not newly and now - self._last_plain < self.every_s:
            return
        self._last_plain = now
        for t in tasks:
            if t.finished and t.name in self._finished:
                continue
            self.stream.write(f"[{now - self._t0:7.1f}s] {self._task_line(t)}\n")
            if t.finished:
                self._finished.add(t.name)
        self.stream.write(f"[{now - self._t0:7.1f}s] {self._devices_line(summary)}\n")
        self.stream.flush()


def results_table(result: Any) -> str:
    """The final table: best config per (workload, device) by time, GFLOPS and GB/s, speedup over the
    template default, how many OK results the device checked, and the tasks that found nothing."""
    names: dict[str, set[str]] = {}
    for t in result.tasks:
        names.setdefault(t.workload, set()).add(t.workload_hash)
    head = (f"{'workload':<22} {'shape':<22} {'device':<10} {'trials':>6} {'errors':>6} {'best ms':>10} "
            f"{'GFLOPS':>9} {'GB/s':>7} {'speedup':>8} {'checked':>8}  best config")
    weighted = any(t.weight != 1 for t in result.tasks)
    if weighted:
        head += "  x count"
    rows = [head, "-" * len(head)]
    failed = []
    for t in result.tasks:
        # name@hash only when two kernels of one name are in the table
        label = f"{t.workload}@{t.workload_hash[:8]}" if len(names[t.workload]) > 1 else t.workload
        shape = ",".join(map(str, t.shape))
        if not t.ok:
            why = t.error or "no config ran correctly (see the log's outcomes)"
            failed.append(t)
            rows.append(f"{label[:22]:<22} {shape[:22]:<22} {t.device_key:<10} {t.trials:>6} {t.errors:>6} "
                        f"{'-':>10} {'-':>9} {'-':>7} {'-':>8} {'-':>8}  FAILED: {why[:200]}")
            continue
        sp = f"{t.speedup:7.2f}x" if t.speedup else "       -"
        gb = f"{t.best_gbps:7.1f}" if t.best_gbps else "      -"
        ok_count = t.trials - t.errors
        rows.append(
            f"{label[:22]:<22} {shape[:22]:<22} {t.device_key:<10} {t.trials:>6} {t.errors:>6} "
            f"{t.best_s * 1e3:10.4f} {t.best_gflops:9.2f} {gb} {sp} {t.checked:>3}/{ok_count:<4}  "
            f"{t.best_index if t.best_index is not None else '-'}" + (f"  x{t.weight:g}" if weighted else "")
        )
    rows += budget_lines(result)
    rows.append(f"log: {result.log}   ({result.measured} measured now, {result.resumed} resumed from the log, "
                f"{result.wall_s:.1f}s)")
    if failed:
        rows.append(f"{len(failed)} task(s) found no correct config: " + ", ".join(t.task for t in failed))
    return "\n".join(rows)


def budget_lines(result: Any) -> list[str]:
    """trials_total campaigns: each device key's budget; networks: the weighted end-to-end sums."""
    rows = []
    for key, a in sorted((getattr(result, "allocation", None) or {}).items()):
        starved = f"; starved: {', '.join(a['starved'])}" if a["starved"] else ""
        rows.append(f"budget {key}: {a['spent']}/{a['budget']} trials, {a['policy']} scheduler, "
                    f"{len(a['grants'])} batches{starved}")
    for n in getattr(result, "networks", None) or []:
        sp = f"{n['speedup']:.2f}x numpy" if n["speedup"] else "-"
        rows.append(f"end to end {n['network']} batch {n['batch']} on {n['device_key']}: sum of count x best "
                    f"latency {n['ours_s'] * 1e3:.3f} ms, numpy {n['numpy_s'] * 1e3:.3f} ms ({sp}; numpy per layer "
                    f"on this host); {n['tuned']}/{n['layers']} layers tuned")
        if n["not_tuned"]:
            rows.append(f"  not tuned (numpy time counted): {', '.join(n['not_tuned'][:12])}"
                        + (f" and {len(n['not_tuned']) - 12} more" if len(n["not_tuned"]) > 12 else ""))
    return rows
