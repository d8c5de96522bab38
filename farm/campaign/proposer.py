"""Tuner proposals off the driver's loop.

An xgb proposal refits the model and anneals over it: seconds on a busy
machine. Run inline, it stalls the driver, so finished builds wait to be
submitted and results wait to be collected while the device idles. A
:class:`BackgroundTuner` runs each proposal on a worker thread instead (one
thread for all tasks: proposals then never compete with each other for the
cores that builds and devices need) and hands the picks over on a later
turn of the loop.

The tuner is never touched by two threads at once: while a proposal runs,
observations are kept and applied when it ends, and ``done`` reads False.
"""
from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTuner:
    """Wraps a tuner; ``propose(n)`` returns finished picks (often []) and starts the next proposal."""

    def __init__(self, tuner: Any, pool: concurrent.futures.Executor) -> None:
        self.tuner = tuner
        self.pool = pool
        self._future: concurrent.futures.Future[list[int]] | None = None
        self._deferred: list[tuple[int, float]] = []

    @property
    def busy(self) -> bool:
        return self._future is not None

    @property
    def computing(self) -> bool:
        """A proposal is running now (one that finished, not yet collected, is not)."""
        return self._future is not None and not self._future.done()

    def propose(self, n: int) -> list[int]:
        if self._future is not None:
            if not self._future.done():
                return []
            fut, self._future = self._future, None
            self._flush()
            return list(fut.result())  # a tuner's exception is the driver's, as if called inline
        if n > 0:
            self._future = self.pool.submit(self.tuner.propose, n)
        return []

    def observe(self, results: Iterable[tuple[int, float]]) -> None:
        self._deferred.extend(results)
        if self._future is None:
            self._flush()

    def _flush(self) -> None:
        if self._deferred:
            batch, self._deferred = self._deferred, []
            self.tuner.observe(batch)

    @property
    def done(self) -> bool:
        return self._future is None and bool(self.tuner.done)

    def __getattr__(self, name: str) -> Any:  # visited, load_history... (used before the loop starts)
        return getattr(self.tuner, name)
