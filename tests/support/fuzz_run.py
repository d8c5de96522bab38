"""One fuzz run as the chaos test and bench_reliability.py do it: a real tracker (with a real
device server on key ``probe``), then a real device server dialling our FuzzTracker."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.fuzz_targets import FuzzStats, FuzzTracker, fuzz_tracker


@dataclass
class FuzzReport:
    tracker: FuzzStats
    device: FuzzStats
    unexpected_results: list[str]
    tracker_alive: bool
    device_alive: bool
    wall_s: float
    leaked: list[int] = field(default_factory=list)
    logs: str = ""

    @property
    def inputs(self) -> int:
        return self.tracker.inputs + self.device.inputs

    @property
    def crashes(self) -> int:
        return int(not self.tracker_alive) + int(not self.device_alive)

    @property
    def hangs(self) -> int:
        return (self.tracker.hangs + self.device.hangs + len(self.tracker.probe_failures)
                + len(self.device.probe_failures))


def run_fuzz(workdir: Path, *, tracker_inputs: int = 8000, device_inputs: int = 2500, seed: int = 11) -> FuzzReport:
    """A real tracker (with a real device server on key ``probe``) and a real device server (dialling our
    FuzzTracker), fuzzed in turn; every process is stopped and accounted for."""
    from tests.rpc.harness import FAKE_KIND, LocalFarm

    t0 = time.monotonic()
    farm = LocalFarm(workdir, heartbeat=0.5, frame_timeout=2.0)
    try:
        farm.start_tracker()
        assert farm.tracker is not None
        farm.start_server("probe", FAKE_KIND)
        farm.wait_devices(farm.client(), 1, "probe")
        token = farm.token.encode()
        tstats = asyncio.run(fuzz_tracker(farm.address, token, probe_key="probe", inputs=tracker_inputs, seed=seed,
                                          pid=farm.tracker.pid))

        async def device() -> tuple[FuzzStats, list[str], bool]:
            ft = FuzzTracker(token, seed=seed + 1)
            address = await ft.start()
            dev = farm._spawn(["serve", "--tracker", address, "--key", "fz", "--kind", FAKE_KIND, "--name", "fz",
                               "--load-grace", "1", "--backoff-cap", "0.3"], "serve-fuzzed")
            try:
                stats = await ft.fuzz(device_inputs, pid=dev.pid)
            finally:
                await ft.stop()
            return stats, ft.unexpected_results, dev.alive()

        dstats, unexpected, dev_alive = asyncio.run(device())
        tracker_alive = farm.tracker.alive()
        logs = farm.logs()
    finally:
        leaked = farm.close()
    return FuzzReport(tstats, dstats, unexpected, tracker_alive, dev_alive, time.monotonic() - t0, leaked, logs)
