"""How long the campaign's devices sat idle, as the tracker saw it.

The driver's own view ("no job of mine out") is wrong both ways: a job may
wait in the tracker's queue while the device runs another campaign's job, and
a result may sit uncollected while the driver is busy proposing. The tracker
knows: each device's cumulative busy seconds (``busy_s`` in its summary,
dispatch to result). Sampling those counters now and then is enough, because
they are cumulative: a late sample loses resolution, never time.

The timeline is a list of ``(t, busy_s, capacity_s)``, all cumulative since
the campaign started (``capacity_s``: device-slot seconds available), so the
idle share of any window is ``1 - Δbusy / Δcapacity``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class IdleMeter:
    """Feed it tracker summaries with ``sample``; read ``timeline`` and ``fraction``."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = set(keys)
        self.timeline: list[tuple[float, float, float]] = []
        self._last: tuple[float, dict[str, tuple[float, int]]] | None = None

    def sample(self, t: float, summary: dict[str, Any]) -> None:
        devices = summary.get("devices")
        if not isinstance(devices, list):
            return  # no summary this time (tracker away): the next sample covers the gap
        now: dict[str, tuple[float, int]] = {}
        for d in devices:
            if d.get("key") in self.keys and "busy_s" in d:
                now[str(d.get("device_id") or d.get("name"))] = (float(d["busy_s"]), int(d.get("capacity", 1)))
        busy = cap = 0.0
        if self._last is not None:
            t0, before = self._last
            # Devices present at both samples; one that joined or left in between counts from its next pair.
            for dev, (b1, c) in now.items():
                if dev in before:
                    busy += max(0.0, b1 - before[dev][0])
                    cap += c * max(0.0, t - t0)
        prev = self.timeline[-1] if self.timeline else (t, 0.0, 0.0)
        self.timeline.append((t, prev[1] + min(busy, cap), prev[2] + cap))
        self._last = (t, now)

    def fraction(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Idle share of device capacity between t0 and t1 (whole timeline by default); None if unknown."""
        return idle_fraction(self.timeline, t0, t1)


def idle_fraction(timeline: list[tuple[float, float, float]], t0: float | None = None,
                  t1: float | None = None) -> float | None:
    pts = [p for p in timeline if (t0 is None or p[0] >= t0) and (t1 is None or p[0] <= t1)]
    if len(pts) < 2 or pts[-1][2] - pts[0][2] <= 0:
        return None
    return 1.0 - (pts[-1][1] - pts[0][1]) / (pts[-1][2] - pts[0][2])
