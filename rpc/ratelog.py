"""Log lines about peers, at most one per peer per window, with a count of the rest.

A scanner or a misconfigured device retrying every few hundred milliseconds must
not bury the tracker's log (one fuzz run used to leave 3,784 "refused" lines).
The first refusal from a host is logged at once; further ones within ``window_s``
are only counted, and the next line logged for that host says how many were held
back. Peers are grouped by host: each connection has a new source port.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable


def host_of(peer: str) -> str:
    """``"10.0.0.5:51234"`` -> ``"10.0.0.5"``; ``"[::1]:5"`` -> ``"[::1]"``."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class PerPeerLog:
    """``warning(peer, msg, *args)`` logs at most once per host per window."""

    def __init__(self, logger: logging.Logger, window_s: float = 60.0, max_hosts: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window_s = window_s
        self.max_hosts = max_hosts
        self.clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # host -> (when last logged, held back since)

    def warning(self, peer: str, msg: str, *args: object) -> bool:
        """True when the line was logged, False when it was only counted."""
        host, now = host_of(peer), self.clock()
        last = self._seen.get(host)
        if last is not None and now - last[0] < self.window_s:
            self._seen[host] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            held = f" (and {last[1]} more from {host} in the last {now - last[0]:.0f}s)"
            msg += held.replace("%", "%%")  # a v6 scope id ("%eth0") is not a format
        self.logger.warning(msg, *args)
        if len(self._seen) >= self.max_hosts:  # bounded: forget hosts whose window is over
            self._seen = {h: v for h, v in self._seen.items() if now - v[0] < self.window_s}
            if len(self._seen) >= self.max_hosts:
                self._seen.clear()
        self._seen[host] = (now, 0)
        return True
