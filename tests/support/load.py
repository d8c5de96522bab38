"""Load on one tracker: many device-server processes with a cheap kernel, several clients.

``run_load`` starts a tracker process and ``devices`` device servers (the fake
backend sleeping ``sleep_s`` per job), in staggered batches so start-up does
not starve a small machine; then ``clients`` concurrent clients (each like a
campaign: ``window`` jobs in flight, a new one submitted as each result
arrives) run for ``duration_s``. It reports jobs/s, job latency percentiles
(submit to result, seen by the client), and the tracker's CPU seconds and RSS
over the measured window. Every process is stopped and accounted for.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpc.client import AsyncClient
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import FAKE_KIND, LocalFarm
from tests.support.fuzz_targets import rss_mb

log = logging.getLogger(__name__)
KEY = "load"


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadReport:
    devices: int
    clients: int
    duration_s: float
    jobs: int
    failed: int
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    tracker_cpu_s: float
    tracker_rss_mb: float
    startup_s: float
    tracker_alive: bool = True
    leaked: list[int] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _client_loop(address: str, token: bytes, n: int, window: int, sleep_s: float, stop_at: float,
                       lat: list[float], outcomes: dict[str, int]) -> None:
    client = await AsyncClient.connect(address, token)
    art = fake_artifact("ok", sleep=sleep_s, tag=f"load-{n}")
    header, code = art.header(), art.code
    opts = {"repeat": 1, "number": 1, "timeout_s": 10}

    async def one() -> None:
        t0 = time.perf_counter()
        job_id = await client.submit(header, code, KEY, opts, priority=n % 2)
        res = await client.result(job_id, timeout=60)
        lat.append(time.perf_counter() - t0)
        outcomes[str(res.get("outcome"))] = outcomes.get(str(res.get("outcome")), 0) + 1

    async def lane() -> None:
        while time.monotonic() < stop_at:
            try:
                await one()
            except Exception as e:  # noqa: BLE001 - counted as a failed job
                outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1

    try:
        await asyncio.gather(*(lane() for _ in range(window)))
    finally:
        await client.close()


def run_load(workdir: Path, *, devices: int = 64, clients: int = 4, duration_s: float = 30.0, window: int = 24,
             sleep_s: float = 0.001, batch: int = 8) -> LoadReport:
    farm = LocalFarm(workdir, heartbeat=2.0, frame_timeout=10.0)
    leaked: list[int] = []
    try:
        t0 = time.monotonic()
        farm.start_tracker()
        assert farm.tracker is not None
        probe = farm.client()
        for start in range(0, devices, batch):  # staggered: a burst of 64 interpreters starves 2 cores
            for i in range(start, min(devices, start + batch)):
                farm.start_server(KEY, FAKE_KIND, name=f"load-{i}")
            farm.wait_devices(probe, min(devices, start + batch), KEY, timeout=180)
        startup = time.monotonic() - t0
        log.info("%d device servers up in %.1fs", devices, startup)
        lat: list[float] = []
        outcomes: dict[str, int] = {}
        pid = farm.tracker.pid
        cpu0, w0 = cpu_s(pid), time.monotonic()

        async def main() -> None:
            stop_at = time.monotonic() + duration_s
            await asyncio.gather(*(_client_loop(farm.address, farm.token.encode(), n, window, sleep_s, stop_at, lat,
                                                outcomes) for n in range(clients)))

        asyncio.run(main())
        wall = time.monotonic() - w0
        cpu = cpu_s(pid) - cpu0
        rss = rss_mb(pid)
        alive = farm.tracker.alive()
    finally:
        leaked = farm.close()
    ok = outcomes.get("OK", 0)
    return LoadReport(
        devices=devices,
        clients=clients,
        duration_s=wall,
        jobs=len(lat),
        failed=sum(outcomes.values()) - ok,
        jobs_per_s=len(lat) / wall if wall else 0.0,
        p50_ms=1e3 * _pct(lat, 0.5),
        p99_ms=1e3 * _pct(lat, 0.99),
        tracker_cpu_s=cpu,
        tracker_rss_mb=rss,
        startup_s=startup,
        tracker_alive=alive,
        leaked=leaked,
        outcomes=outcomes,
    )
