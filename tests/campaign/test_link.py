"""campaign.link.FarmLink: re-dialling a lost tracker without blocking the driver loop."""
from __future__ import annotations

import time

import pytest

from farm.campaign.link import FarmLink
from farm.errors import FarmError


class FakeSession:
    def __init__(self, n: int) -> None:
        self.n, self.closed = n, False

    def close(self) -> None:
        self.closed = True


def test_restore_redials_with_backoff_and_swaps_the_session() -> None:
    first = FakeSession(0)
    attempts: list[float] = []

    def dial() -> FakeSession:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionRefusedError("tracker down")
        return FakeSession(len(attempts))

    link = FarmLink(first, dial, backoff_base=0.05, backoff_cap=0.1)
    assert link.restore() and link.gen == 0  # not broken: nothing to do
    link.lost(0, RuntimeError("gone"))
    assert link.broken
    deadline = time.monotonic() + 5
    while not link.restore():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert len(attempts) == 3 and link.session.n == 3 and first.closed
    assert attempts[1] - attempts[0] >= 0.02, "retries are spaced by the backoff, not a busy loop"
    assert link.gen == 1 and link.reconnects == 1 and not link.broken
    # a late failure of the old session does not break the new one
    link.lost(0, RuntimeError("old future failed late"))
    assert not link.broken
    link.close()
    assert link.session.closed


def test_outage_limit_and_no_reconnect() -> None:
    link = FarmLink(FakeSession(0), lambda: (_ for _ in ()).throw(OSError("down")), max_outage_s=0.05,
                    backoff_base=0.01, backoff_cap=0.01)
    link.lost(0, RuntimeError("gone"))
    with pytest.raises(FarmError, match="unreachable"):
        for _ in range(1000):
            link.restore()
            time.sleep(0.001)
    bare = FarmLink(FakeSession(0), None)
    bare.lost(0, RuntimeError("gone"))
    with pytest.raises(FarmError, match="no way to reconnect"):
        bare.restore()


class PingClient:
    def __init__(self, answers: bool) -> None:
        self.answers, self.pings, self.aborted = answers, 0, False

    def ping(self, timeout: float) -> None:
        self.pings += 1
        if not self.answers:
            raise TimeoutError(f"no answer in {timeout}s")

    def abort(self) -> None:
        self.aborted = True


def test_watch_pings_a_quiet_tracker_and_drops_a_dead_one() -> None:
    alive, dead = FakeSession(0), FakeSession(1)
    alive.client, dead.client = PingClient(True), PingClient(False)  # type: ignore[attr-defined]
    link = FarmLink(alive, None, stall_s=0.05, ping_timeout_s=0.01)
    link.watch(busy=True, progressed=False)
    assert alive.client.pings == 0  # type: ignore[attr-defined]  # not quiet for long yet
    time.sleep(0.06)
    link.watch(busy=False, progressed=False)  # nothing in flight: silence is fine
    assert alive.client.pings == 0  # type: ignore[attr-defined]
    time.sleep(0.06)
    link.watch(busy=True, progressed=False)
    assert alive.client.pings == 1 and not link.broken  # type: ignore[attr-defined]  # long jobs, live tracker
    link = FarmLink(dead, None, stall_s=0.0, ping_timeout_s=0.01)
    link.watch(busy=True, progressed=False)
    assert dead.client.aborted and link.broken  # type: ignore[attr-defined]
