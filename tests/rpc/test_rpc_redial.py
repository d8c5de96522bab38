"""Clients survive a tracker restart (issue #18, 3): ``farm.connect`` sessions, their leases, and
``farm measure`` re-dial with backoff and resubmit the jobs whose results never came; a result is
delivered once, to its own job; a lost lease is reported lost; an unreachable tracker at start fails
fast, and an outage past the bound fails cleanly."""
from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from farm.client.session import connect
from farm.records.measure import RunOptions
from rpc.client import MAX_OUTAGE_S
from rpc.errors import ConnectionLost, NoSuchLease
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import ROOT, LocalFarm
from tests.rpc.restart import kill_and_restart, run_restarts, wait_busy

OPTS = RunOptions(repeat=1, timeout_s=10)


def test_session_jobs_survive_restarts_mid_job(tmp_path: Path) -> None:
    r = run_restarts(tmp_path / "farm", jobs=6, restarts=2)
    assert (r.measured, r.lost, r.wrong) == (6, 0, 0), r.errors
    assert r.reconnects >= 1 and r.resubmitted >= 1 and not r.leaked


def test_results_go_to_their_own_jobs_and_ids_are_per_instance(local_farm: LocalFarm) -> None:
    local_farm.start_server("k")
    local_farm.wait_devices(local_farm.client(), 1, "k")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = connect(local_farm.address, token=local_farm.token)
        try:
            running = session.submit(fake_artifact("ok", 1.0, tag="running"), key="k", options=OPTS)
            queued = session.submit(fake_artifact("ok", 0.0, tag="queued"), key="k", options=OPTS)
            wait_busy(local_farm, "k")
            kill_and_restart(local_farm)
            after = session.submit(fake_artifact("ok", 0.0, tag="after"), key="k", options=OPTS)
            for job, tag in ((running, "running"), (queued, "queued"), (after, "after")):
                r = job.result(timeout=60)
                assert r.ok and r.extra["tag"] == tag, r
            assert session.reconnects == 1 and session.client.resubmitted == 2
            # the new tracker's ids carry its own tag: an old id can never name a new job
            assert after.job_id.rsplit("-", 1)[1] != running.job_id.rsplit("-", 1)[1]
            assert running.job_id.rsplit("-", 1)[1] == queued.job_id.rsplit("-", 1)[1]
        finally:
            session.close()
        with pytest.raises(ConnectionLost, match="closed"):  # a closed session says so, once
            session.summary()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]


def test_a_lease_is_reported_lost_not_reacquired(local_farm: LocalFarm) -> None:
    local_farm.start_server("k", name="only")
    local_farm.wait_devices(local_farm.client(), 1, "k")
    with connect(local_farm.address, token=local_farm.token) as session:
        lease = session.lease("k", queue_timeout_s=10)
        assert lease.measure(fake_artifact("ok", tag="leased"), options=OPTS).ok and lease.lost is None
        kill_and_restart(local_farm)
        s = local_farm.wait_devices(local_farm.client(), 1, "k")
        assert s["keys"]["k"]["leased"] == 0
        with pytest.raises(NoSuchLease, match="lost"):
            lease.measure(fake_artifact("ok", tag="after"), options=OPTS)
        assert lease.lost and "tracker connection" in lease.lost
        with pytest.raises(NoSuchLease):
            lease.release()
        # the device is free for everyone, this session included, not silently leased again
        assert session.measure(fake_artifact("ok", tag="pool"), key="k", options=OPTS).ok
        assert session.summary()["keys"]["k"]["leased"] == 0


def test_unreachable_tracker_at_start_fails_fast() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost):
        connect(f"127.0.0.1:{port}", token="t")
    assert time.monotonic() - t0 < 2.0


def test_an_outage_past_the_bound_fails_cleanly(local_farm: LocalFarm) -> None:
    local_farm.start_server("k")
    local_farm.wait_devices(local_farm.client(), 1, "k")
    with connect(local_farm.address, token=local_farm.token, max_outage_s=1.5) as session:
        job = session.submit(fake_artifact("ok", 5.0, tag="long"), key="k", options=OPTS)
        wait_busy(local_farm, "k")
        assert local_farm.tracker is not None
        local_farm.tracker.kill9()
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"unreachable for \d+s \(limit 1.5s\)"):
            job.result(timeout=30)
        assert time.monotonic() - t0 < 6.0
        with pytest.raises(ConnectionLost):
            session.summary()
    assert MAX_OUTAGE_S == 300.0  # the shared default (campaigns' --max-outage)


def test_farm_measure_survives_a_tracker_restart(local_farm: LocalFarm) -> None:
    """`farm measure` used to abort with ConnectionLost 1.3 s after a tracker restart. Here its job
    waits in the queue (another client leases the only device) when the tracker is killed."""
    local_farm.start_server("cpu", "cpu", name="cpu-only")
    holder = local_farm.client()
    local_farm.wait_devices(holder, 1, "cpu", timeout=60)
    holder.lease("cpu", queue_timeout_s=10)
    cmd = [sys.executable, "-m", "farm.cli", "measure", "--tracker", local_farm.address, "--key", "cpu", "matmul",
           "--shape", "32,32,32", "--timeout", "10", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=local_farm.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while holder.summary()["keys"]["cpu"]["pending"] < 1:  # built, submitted, queued
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        kill_and_restart(local_farm)  # the lease dies with the tracker; the device re-registers
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "OK" and result["median_s"] > 0, result
