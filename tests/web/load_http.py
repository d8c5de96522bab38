"""The page's cost to the tracker under load: HTTP pollers against the reliability load run.

``run_http_load`` starts the load run's farm (a tracker with ``--http``, ``devices`` device-server
processes with a 1 ms kernel, in staggered batches) and ``campaigns`` clients that keep
``window`` jobs in flight each and send a ``campaign_report`` every second, as ``farm tune``
does. Then it alternates rounds without and with ``pollers`` HTTP pollers (a separate process,
each poller doing what the page does once a second: /api/summary, /api/devices,
/api/campaigns and every campaign's curve, on one keep-alive connection), in ABBA order so a
drift of the machine falls on both sides. Per round it takes the p99 of the job latency
(submit to result, what dispatch through the tracker costs a campaign); the ratio of each pair
(with / without) and its median over pairs is ``dispatch_p99_ratio_with_pollers``. The pollers
report their own request latencies: ``http_p99_ms``.

The device servers, stand-ins for remote boards, run at nice ``device_nice`` (10): on 2 cores
their 128 processes would otherwise starve the processes measured at random.

``python -m tests.web.load_http poll PORT TOKEN N SECONDS`` is the poller process.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpc.client import AsyncClient
from rpc.webdocs import WANTED_S
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import FAKE_KIND, ROOT, LocalFarm
from tests.support.procs import descendants

KEY = "load"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---- the poller process ------------------------------------------------------------------------
async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, token: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}")
    return body


async def _poller(port: int, token: str, stop_at: float, lat: list[float], errors: list[str]) -> None:
    await asyncio.sleep(random.random())  # browsers are not in step: each polls at its own phase
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            t_cycle = time.monotonic()
            try:
                paths = ["/api/summary", "/api/devices", "/api/campaigns"]
                for path in paths:
                    t0 = time.perf_counter()
                    body = await _get(reader, writer, path, token)
                    lat.append(time.perf_counter() - t0)
                    if path == "/api/campaigns":
                        paths += [f"/api/campaigns/{c['name']}/curve" for c in json.loads(body)["campaigns"]]
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t_cycle)))  # the page polls once a second
    finally:
        writer.close()


def poll_main(port: int, token: str, n: int, seconds: float) -> None:
    lat: list[float] = []
    errors: list[str] = []

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_poller(port, token, stop_at, lat, errors) for _ in range(n)))

    asyncio.run(main())
    print(json.dumps({"latencies_s": lat, "errors": errors[:20], "error_count": len(errors)}), flush=True)


# ---- the load --------------------------------------------------------------------------------------
@dataclass
class HttpLoadReport:
    devices: int
    campaigns: int
    pollers: int
    rounds: list[dict[str, Any]] = field(default_factory=list)  # {"pollers": bool, "jobs", "p99_ms"}
    ratios: list[float] = field(default_factory=list)
    http_requests: int = 0
    http_errors: int = 0
    http_p50_ms: float = float("nan")
    http_p99_ms: float = float("nan")
    http_over_50ms: int = 0
    startup_s: float = 0.0
    tracker_alive: bool = True
    leaked: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")


async def _campaign(address: str, token: bytes, n: int, window: int, stop: asyncio.Event,
                    lat: list[tuple[float, float]]) -> None:
    """One campaign: ``window`` jobs in flight, a campaign_report every second."""
    client = await AsyncClient.connect(address, token)
    art = fake_artifact("ok", sleep=0.001, tag=f"http-load-{n}")
    header, code = art.header(), art.code
    done = [0]

    async def lane() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                job = await client.submit(header, code, KEY, {"repeat": 1, "number": 1, "timeout_s": 10})
                await client.result(job, timeout=60)
            except Exception:  # noqa: BLE001 - a failed job is not a latency
                continue
            lat.append((time.monotonic(), time.perf_counter() - t0))
            done[0] += 1

    async def reporter() -> None:
        while not stop.is_set():
            d = done[0]
            curve = [[float(i), float(i)] for i in range(1, min(d, 200) + 1)]
            tasks = [{"task": f"fake({t})@{KEY}", "workload": "fake", "key": KEY, "budget": 10**6, "done": d,
                      "errors": 0, "in_flight": window, "best_gflops": float(d), "finished": False, "curve": curve}
                     for t in range(2)]
            try:
                await client.call("campaign_report", name=f"load-{n}", host="bench", tasks=tasks, timeout=5)
            except Exception:  # noqa: BLE001 - best effort, as farm.campaign.report
                pass
            await asyncio.sleep(1.0)

    try:
        await asyncio.gather(reporter(), *(lane() for _ in range(window)))
    finally:
        await client.close()


def run_http_load(workdir: Path, *, devices: int = 64, campaigns: int = 4, pollers: int = 10, pairs: int = 3,
                  round_s: float = 8.0, warmup_s: float = 1.5, window: int = 24, batch: int = 8,
                  device_nice: int = 10) -> HttpLoadReport:
    report = HttpLoadReport(devices, campaigns, pollers)
    farm = LocalFarm(workdir, heartbeat=2.0, frame_timeout=10.0)
    try:
        t0 = time.monotonic()
        farm.start_tracker(0, "--http", "127.0.0.1:0")
        assert farm.tracker is not None and farm.tracker.popen.stdout is not None
        m = re.search(r"tracker page on http://127\.0\.0\.1:(\d+)/", farm.tracker.popen.stdout.readline().decode())
        assert m, "the tracker did not print its page address"
        page = int(m.group(1))
        probe = farm.client()
        for start in range(0, devices, batch):  # staggered: a burst of 64 interpreters starves 2 cores
            for i in range(start, min(devices, start + batch)):
                farm.start_server(KEY, FAKE_KIND, name=f"http-load-{i}")
            farm.wait_devices(probe, min(devices, start + batch), KEY, timeout=180)
        report.startup_s = time.monotonic() - t0
        if device_nice:
            # The device servers stand in for remote boards: on a farm they never share the tracker's
            # cores. Here 2 x devices processes do, so they yield to what is measured (tracker,
            # campaigns, pollers) instead of starving it at random.
            for proc in farm.procs:
                if proc is not farm.tracker:
                    for pid in (proc.pid, *descendants(proc.pid)):
                        with contextlib.suppress(OSError):
                            os.setpriority(os.PRIO_PROCESS, pid, device_nice)
        lat: list[tuple[float, float]] = []
        http_lat: list[float] = []
        order = [flag for i in range(pairs) for flag in ((False, True) if i % 2 == 0 else (True, False))]

        async def main() -> None:
            stop = asyncio.Event()
            runs = [asyncio.create_task(_campaign(farm.address, farm.token.encode(), n, window, stop, lat))
                    for n in range(campaigns)]
            await asyncio.sleep(3.0)  # every campaign connected and reporting
            for with_pollers in order:
                proc = None
                if with_pollers:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "tests.web.load_http", "poll", str(page), farm.token, str(pollers),
                        str(warmup_s + round_s), cwd=ROOT, stdout=subprocess.PIPE, env=farm.env())
                # off: also past the tracker's rendering for the last poller (webdocs.WANTED_S)
                await asyncio.sleep(warmup_s if with_pollers else max(warmup_s, WANTED_S + 0.5))
                w0 = time.monotonic()
                await asyncio.sleep(round_s)
                w1 = time.monotonic()
                xs = [x for t, x in lat if w0 <= t < w1]
                report.rounds.append({"pollers": with_pollers, "jobs": len(xs), "p99_ms": 1e3 * _pct(xs, 0.99),
                                      "p50_ms": 1e3 * _pct(xs, 0.5)})
                if proc is not None:
                    out, _ = await proc.communicate()
                    res = json.loads(out.decode().strip().splitlines()[-1])
                    http_lat.extend(res["latencies_s"])
                    report.http_errors += res["error_count"]
            stop.set()
            await asyncio.wait(runs, timeout=30)

        asyncio.run(main())
        for a, b in zip(report.rounds[::2], report.rounds[1::2]):
            on, off = (a, b) if a["pollers"] else (b, a)
            report.ratios.append(on["p99_ms"] / off["p99_ms"])
        report.http_requests = len(http_lat)
        report.http_p50_ms, report.http_p99_ms = 1e3 * _pct(http_lat, 0.5), 1e3 * _pct(http_lat, 0.99)
        report.http_over_50ms = sum(x > 0.05 for x in http_lat)
        report.tracker_alive = farm.tracker.alive()
    finally:
        report.leaked = farm.close()
    return report


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "poll":
        poll_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit("usage: python -m tests.web.load_http poll PORT TOKEN N SECONDS")
