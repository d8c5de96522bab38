"""Refused connections are logged at most once per peer per minute, with a count (issue #18, 6):
one fuzz run used to leave 3,784 WARNING lines in the tracker's log."""
from __future__ import annotations

import asyncio
import logging

import pytest

from rpc.ratelog import PerPeerLog, host_of
from rpc.tracker import Tracker


def test_once_per_host_per_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("test.ratelog")
    plog = PerPeerLog(logger, window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert plog.warning("10.0.0.5:1000", "refused %s", "a")
        for port in range(1001, 1100):  # new source port each time: still the same peer
            assert not plog.warning(f"10.0.0.5:{port}", "refused %s", "b")
        assert plog.warning("10.0.0.6:1000", "refused %s", "other host")
        now[0] = 61.0
        assert plog.warning("10.0.0.5:2000", "refused %s", "c")
        assert not plog.warning("10.0.0.5:2001", "refused %s", "d")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "refused other host", "refused c (and 99 more from 10.0.0.5 in the last 61s)"]


def test_hosts_are_bounded_and_parsed() -> None:
    now = [0.0]
    plog = PerPeerLog(logging.getLogger("test.ratelog2"), window_s=1.0, max_hosts=10, clock=lambda: now[0])
    for i in range(100):
        plog.warning(f"10.0.{i}.1:5", "x")
        now[0] += 0.5
    assert len(plog._seen) <= 10
    assert host_of("[::1]:5") == "[::1]" and host_of("10.1.2.3:99") == "10.1.2.3" and host_of("pipe") == "pipe"
    assert host_of("fe80::1%eth0:7") == "fe80::1%eth0"
    plog.warning("fe80::1%eth0:7", "y")
    plog.warning("fe80::1%eth0:8", "y")
    now[0] += 5
    plog.warning("fe80::1%eth0:9", "y %s", "z")  # the held-back count must not break %-formatting


def test_tracker_logs_one_line_for_a_burst_of_refusals(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        tracker = Tracker(b"tok", handshake_timeout=2.0)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            for _ in range(50):  # garbage where the auth belongs: refused at once
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\n\r\n")
                await writer.drain()
                while await reader.read(4096):
                    pass
                writer.close()
            return tracker.stats["bad_connections"]
        finally:
            await tracker.stop()

    with caplog.at_level(logging.WARNING, logger="rpc.tracker"):
        bad = asyncio.run(main())
    refused = [r for r in caplog.records if r.name == "rpc.tracker" and "refused" in r.getMessage()]
    assert bad == 50 and len(refused) == 1, [r.getMessage() for r in refused]
