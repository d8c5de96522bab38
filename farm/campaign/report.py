"""The campaign's side of the tracker's live page: progress, best-so-far curves and errors.

``farm tune`` composes a ``CampaignReporter`` with its terminal progress (``compose``): every
call of the driver's ``on_progress(tasks, summary)`` offers the reporter a snapshot, and at
most one per ``every_s`` (1 s) goes to the tracker as a ``campaign_report`` over the campaign's
own authenticated session (rpc/PROTOCOL.md). Each report is whole (every task's progress and
its curve, thinned to ``rpc.fields.MAX_CURVE_POINTS``), so a restarted tracker knows the
campaign again from the first report after the campaign re-dialled it.

Best effort, and never in the campaign's way: the driver's thread only builds the snapshot
(a few hundred numbers) and leaves it in a one-slot mailbox; a daemon thread sends it, with a
short timeout, on whatever session the campaign holds at that moment (after a re-dial: the
new one). A failure is logged at debug and the next snapshot tries again; a tracker that does
not know the op (an older one) is asked again only every ``quiet_s``. Nothing here raises
into the driver.
"""
from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rpc.errors import BadRequest
from rpc.fields import MAX_CURVE_POINTS, MAX_REPORT_TASKS

log = logging.getLogger(__name__)

Progress = Callable[[list[Any], dict[str, Any]], None]


def compose(*callbacks: Progress | None) -> Progress | None:
    """One ``on_progress`` that calls each given callback in turn (None: skipped)."""
    calls = [c for c in callbacks if c is not None]
    if not calls:
        return None
    if len(calls) == 1:
        return calls[0]

    def both(tasks: list[Any], summary: dict[str, Any]) -> None:
        for c in calls:
            c(tasks, summary)

    return both


def thin(history: Sequence[tuple[int, float]], max_points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """A best-so-far curve as at most ``max_points`` [trial, best] points: every point while it
    fits; past that the first, the last and the improvements first, then evenly spaced trials."""
    pts = [[float(t), float(g)] for t, g in history]
    if len(pts) <= max_points:
        return pts
    keep = {0, len(pts) - 1}
    steps = [i for i in range(1, len(pts)) if pts[i][1] != pts[i - 1][1]]
    if len(steps) > max_points - 2:  # too many improvements: evenly among them
        stride = len(steps) / (max_points - 2)
        steps = [steps[int(k * stride)] for k in range(max_points - 2)]
    keep.update(steps)
    room = max_points - len(keep)
    if room > 0:
        stride = len(pts) / room
        keep.update(int(k * stride) for k in range(room))
    return [pts[i] for i in sorted(keep)[:max_points]]


def task_report(t: Any) -> dict[str, Any]:
    """One task of the driver (farm.campaign.tasks.Task) as the wire wants it (rpc.fields.CAMPAIGN_TASK)."""
    return {"task": str(t.name)[:200], "workload": str(t.wl.name)[:200], "key": str(t.key)[:128],
            "budget": int(t.budget), "done": int(t.done_trials), "errors": int(t.errors),
            "in_flight": int(t.in_flight), "best_gflops": float(t.best_gflops),
            "best_s": None if t.best_s is None else float(t.best_s), "finished": bool(t.finished),
            "error": str(t.error or "")[:2000], "curve": thin(t.history)}


class CampaignReporter:
    """``on_progress`` callback that reports the campaign to the tracker (see the module doc).

    ``session``: returns the campaign's current farm session (``farm.connect``'s Session),
    asked anew for each report, so a re-dialled session is used as soon as there is one."""

    def __init__(self, name: str, session: Callable[[], Any], *, every_s: float = 1.0, timeout_s: float = 2.0,
                 quiet_s: float = 60.0, host: str | None = None) -> None:
        self.name = name
        self._session = session
        self.every_s, self.timeout_s, self.quiet_s = every_s, timeout_s, quiet_s
        self.host = (host if host is not None else socket.gethostname())[:200]
        self.run = secrets.token_hex(8)  # tells two runs of one campaign apart on the page
        self.sent = self.failed = 0
        self._t0 = time.monotonic()
        self._last = float("-inf")
        self._quiet_until = 0.0
        self._cv = threading.Condition()
        self._slot: dict[str, Any] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __call__(self, tasks: list[Any], summary: dict[str, Any]) -> None:
        try:
            now = time.monotonic()
            finished = bool(tasks) and all(t.finished for t in tasks)
            if now - self._last < self.every_s and not finished:
                return
            self._last = now
            report = {"name": self.name[:200], "run": self.run, "host": self.host,
                      "elapsed_s": round(now - self._t0, 3), "finished": finished,
                      "tasks": [task_report(t) for t in tasks[:MAX_REPORT_TASKS]]}
            with self._cv:
                if self._closed:
                    return
                self._slot = report  # an unsent older snapshot is simply replaced
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="kf-campaign-report", daemon=True)
                    self._thread.start()
                self._cv.notify()
        except Exception:  # noqa: BLE001 - reporting must never break the campaign
            log.debug("campaign report not built", exc_info=True)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._slot is None and not self._closed:
                    self._cv.wait()
                if self._slot is None:
                    return
                report, self._slot, self._busy = self._slot, None, True
            try:
                self._send(report)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _send(self, report: dict[str, Any]) -> None:
        if time.monotonic() < self._quiet_until:
            return
        try:
            self._session().client.call("campaign_report", timeout=self.timeout_s, **report)
            self.sent += 1
        except BadRequest as e:  # an older tracker without the op, or a field it refused
            self.failed += 1
            self._quiet_until = time.monotonic() + self.quiet_s
            log.debug("tracker refused the campaign report (next try in %.0fs): %s", self.quiet_s, e)
        except Exception as e:  # noqa: BLE001 - tracker away or re-dialling: the next snapshot tries again
            self.failed += 1
            log.debug("campaign report not sent: %s: %s", type(e).__name__, e)

    def close(self, wait_s: float = 1.0) -> None:
        """Send what is pending (the final report) if it takes under ``wait_s``, then stop."""
        deadline = time.monotonic() + wait_s
        with self._cv:
            while (self._slot is not None or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            self._closed = True
            self._slot = None
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
