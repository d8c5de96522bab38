"""Measurements across tracker restarts, as the laptop path makes them (``farm.connect``).

``run_restarts`` starts a real tracker and a real device server (the fake backend,
kernels that sleep), opens a re-dialling session, keeps ``jobs`` measurements in
flight and SIGKILLs the tracker ``restarts`` times, restarting it on the same port
each time, while jobs are queued and running. Every job must come back measured,
once, with its own tag: ``lost`` counts jobs that failed, ``wrong`` results that came
back to a job other than their own. Used by tests/rpc/test_rpc_redial.py and
benchmarks/bench_reliability.py (``measure_lost_on_restart``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import LocalFarm


@dataclass
class RestartReport:
    jobs: int
    measured: int
    lost: int
    wrong: int
    reconnects: int
    resubmitted: int
    wall_s: float
    errors: list[str] = field(default_factory=list)
    leaked: list[int] = field(default_factory=list)


def kill_and_restart(farm: LocalFarm, down_s: float = 0.5) -> None:
    """SIGKILL the tracker and start a fresh one on the same port after ``down_s``."""
    assert farm.tracker is not None
    port = int(farm.address.rsplit(":", 1)[1])
    farm.tracker.kill9()
    time.sleep(down_s)
    farm.start_tracker(port)


def wait_busy(farm: LocalFarm, key: str, timeout: float = 20.0) -> None:
    """Until a device of ``key`` is running a job (asked on a fresh connection: the tracker may be new)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = farm.client()
        try:
            k = c.summary()["keys"].get(key, {})
        finally:
            c.close()
            farm.clients.remove(c)
        if k.get("busy"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no device of {key!r} got busy in {timeout}s\n{farm.logs()}")


def run_restarts(workdir: Path, *, jobs: int = 8, restarts: int = 2, sleep_s: float = 0.4,
                 max_outage_s: float = 60.0) -> RestartReport:
    from farm.client.session import connect
    from farm.records.measure import RunOptions

    farm = LocalFarm(workdir, heartbeat=0.5, frame_timeout=2.0)
    t0 = time.monotonic()
    errors: list[str] = []
    measured = wrong = 0
    try:
        farm.start_tracker()
        farm.start_server("k", name="dev-a")
        farm.wait_devices(farm.client(), 1, "k")
        with connect(farm.address, token=farm.token, max_outage_s=max_outage_s) as session:
            opts = RunOptions(repeat=1, timeout_s=10)
            submitted = [(i, session.submit(fake_artifact("ok", sleep_s, tag=f"r{i}"), key="k", options=opts))
                         for i in range(jobs)]
            for _ in range(restarts):
                wait_busy(farm, "k")
                kill_and_restart(farm)
            for i, job in submitted:
                try:
                    r = job.result(timeout=120)
                except Exception as e:  # noqa: BLE001 - counted: the contract is that none is lost
                    errors.append(f"job {i}: {type(e).__name__}: {e}")
                    continue
                if not r.ok or r.extra.get("tag") != f"r{i}":
                    wrong += 1
                    errors.append(f"job {i}: {r.outcome.value} tag {r.extra.get('tag')!r}: {r.message}")
                else:
                    measured += 1
            reconnects, resubmitted = session.reconnects, session.client.resubmitted
    finally:
        leaked = farm.close()
    return RestartReport(jobs, measured, jobs - measured - wrong, wrong, reconnects, resubmitted,
                         time.monotonic() - t0, errors, leaked)
