"""The campaign driver's connection to the farm, re-dialled when the tracker goes away.

The tracker keeps its queue in memory: when it is killed and restarted, the
jobs it held are gone and the driver's connection breaks. The driver notes
the break (``lost``), keeps building, and asks ``restore`` on each turn of
its loop; ``restore`` re-dials with jittered exponential backoff (never
blocking the loop for long) and, once connected, the driver resubmits every
job whose result never came. An outage longer than ``max_outage_s`` aborts
the campaign with a FarmError (rerunning it resumes from the log).

``watch`` pings a tracker that has gone quiet while jobs are in flight: a stopped
or wedged tracker keeps its TCP connections open and would otherwise stall the
campaign forever.

Each session is numbered (``gen``): a failure reported for an older session
(a job future that failed late) must not mark a fresh connection broken.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from farm.errors import FarmError
from rpc.client import MAX_OUTAGE_S
from rpc.transport import backoff_delays

log = logging.getLogger(__name__)


class FarmLink:
    """Holds the current farm session; ``lost(gen)`` marks it broken, ``restore()`` re-dials."""

    def __init__(self, session: Any, reconnect: Callable[[], Any] | None = None, *, max_outage_s: float = MAX_OUTAGE_S,
                 backoff_base: float = 0.2, backoff_cap: float = 5.0, stall_s: float = 15.0,
                 ping_timeout_s: float = 10.0) -> None:
        self.session = session
        self.reconnect = reconnect
        self.max_outage_s = max_outage_s
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.gen = 0
        self.broken = False
        self.reconnects = 0
        self._since = 0.0
        self._next_try = 0.0
        self._delays: Iterator[float] = backoff_delays(backoff_base, backoff_cap)
        self._opened: list[Any] = []  # sessions we made (the first one belongs to the caller)
        self.stall_s, self.ping_timeout_s = stall_s, ping_timeout_s
        self._last_progress = time.monotonic()

    def lost(self, gen: int, err: BaseException) -> None:
        """A call on session ``gen`` failed with a lost connection."""
        if gen != self.gen or self.broken:
            return
        self.broken = True
        self._since = self._next_try = time.monotonic()
        self._delays = backoff_delays(self.backoff_base, self.backoff_cap)
        log.warning("lost the tracker (%s); reconnecting", err)

    def restore(self) -> bool:
        """True when connected; otherwise one dial attempt if its backoff delay is over."""
        if not self.broken:
            return True
        now = time.monotonic()
        if self.reconnect is None:
            raise FarmError(f"lost the tracker and no way to reconnect was given (since {now - self._since:.0f}s)")
        if now - self._since > self.max_outage_s:
            raise FarmError(f"the tracker has been unreachable for {now - self._since:.0f}s "
                            f"(limit {self.max_outage_s:g}s); rerun the campaign to resume from its log")
        if now < self._next_try:
            return False
        try:
            fresh = self.reconnect()
        except Exception as e:  # noqa: BLE001 - any failure to dial is retried until the outage limit
            self._next_try = time.monotonic() + next(self._delays)
            log.info("reconnect failed (%s: %s); next try in %.1fs", type(e).__name__, e, self._next_try - now)
            return False
        self._close(self.session)
        self.session = fresh
        self._opened.append(fresh)
        self.gen += 1
        self.broken = False
        self.reconnects += 1
        log.warning("reconnected to the tracker after %.1fs (reconnect %d)", time.monotonic() - self._since,
                    self.reconnects)
        return True

    def watch(self, busy: bool, progressed: bool) -> None:
        """Catch a tracker that is alive to TCP but no longer answers (stopped, wedged).

        Called on each turn of the driver loop. When jobs are in flight and nothing has
        come back for ``stall_s``, ping; if the ping times out, drop the connection so its
        jobs fail with ConnectionLost and are resubmitted after a re-dial."""
        now = time.monotonic()
        if progressed or not busy or self.broken:
            self._last_progress = now
            return
        if now - self._last_progress < self.stall_s:
            return
        gen = self.gen
        try:
            self.session.client.ping(self.ping_timeout_s)
        except Exception as e:  # noqa: BLE001 - timeout or lost connection: either way, re-dial
            log.warning("the tracker did not answer a ping in %.0fs (%s); dropping the connection",
                        self.ping_timeout_s, type(e).__name__)
            self.session.client.abort()
            self.lost(gen, e)
        self._last_progress = time.monotonic()  # alive (jobs are just long) or dropped: next check later

    def close(self) -> None:
        for s in self._opened:
            self._close(s)
        self._opened = []

    @staticmethod
    def _close(session: Any) -> None:
        try:
            session.close()
        except Exception as e:  # noqa: BLE001 - the old connection is already dead
            log.debug("closing a lost session: %r", e)
