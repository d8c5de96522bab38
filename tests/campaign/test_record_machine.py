"""Every record names the machine that measured it: two device servers of different machines
serve one key (a real tracker and real servers on 127.0.0.1, port 0), the driver stamps each
result with its own server's fingerprint, and a resume counts as the task's own trials only
records of a machine the key still has."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.log import LogRecord
from farm.records.identity import machine_identity
from farm.records.measure import MeasureResult, Outcome, RunOptions
from tests.rpc.fake_backend import FakeBackend, fake_artifact
from tests.rpc.harness import LocalFarm

KEY = "pi"
_BASE = {"isa": "aarch64", "triple": "aarch64-unknown-linux-gnu", "target": "llvm -mcpu=generic", "cores": 1}
A72 = dict(_BASE, cpu_name="cortex-a72", cpu_features=["crc", "neon"])
A76 = dict(_BASE, cpu_name="cortex-a76", cpu_features=["crc", "dotprod", "neon"])
A53 = dict(_BASE, cpu_name="cortex-a53", cpu_features=["crc", "neon"])  # a board the key no longer has


class CortexA72(FakeBackend):
    """The fake backend (it runs jobs without compiling), registered as a Cortex-A72 board."""

    def describe(self) -> dict[str, Any]:
        return dict(A72, probe={"fma_latency": 7.0})


class CortexA76(FakeBackend):
    def describe(self) -> dict[str, Any]:
        return dict(A76, probe={"fma_latency": 4.0})


@pytest.fixture
def two_machines(tmp_path: Path) -> Iterator[LocalFarm]:
    farm = LocalFarm(tmp_path / "farm")
    farm.start_tracker()
    try:
        farm.start_server(KEY, f"{__name__}:CortexA72", name="pi-a72")
        farm.start_server(KEY, f"{__name__}:CortexA76", name="pi-a76")
        farm.wait_devices(farm.client(), 2, KEY)
        yield farm
    finally:
        leaked = farm.close()
    assert not leaked, f"processes outlived the farm: {leaked}"


def _record(index: int, fp: dict[str, Any]) -> LogRecord:
    res = MeasureResult(Outcome.OK, (1e-4,), flops=2 * 64 ** 3, number=1, device_key=KEY)
    return LogRecord.from_measurement(workload="matmul", args=(64, 64, 64), target="llvm -mcpu=generic",
                                      device_key=KEY, config={"index": index, "knobs": {}}, result=res,
                                      fingerprint=fp)


def test_each_record_names_the_device_that_measured_it(two_machines: LocalFarm, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from farm.campaign.config import parse_campaign
    from farm.campaign.driver import CampaignRunner
    from farm.client.session import connect

    log = tmp_path / "c.jsonl"
    spec = parse_campaign(f"name: c\nlog: {log}\ntuner: random\ntrials: 50\ntransfer: false\n"
                          f"device_keys: [{KEY}]\nworkloads:\n  - {{name: matmul, shape: [64, 64, 64]}}\n")
    # Resume: two trials of machines the key has, three of one it no longer has.
    history = [_record(1, A72), _record(2, A76), _record(3, A53), _record(4, A53), _record(5, A53)]
    with connect(two_machines.address, token=two_machines.token) as session:
        runner = CampaignRunner(spec, session)
        with caplog.at_level(logging.INFO, logger="farm.campaign.tasks"):
            runner._make_tasks(history)
        (task,) = runner.tasks
        assert task.done_trials == 2 and runner.resumed == 2
        assert {3, 4, 5}.isdisjoint(task.tuner.visited)  # set aside: measured again here, not skipped
        assert "3 records measured on other machines (cortex-a53 aarch64 neon" in caplog.text

        # Jobs long enough that both servers take some.
        jobs = [session.submit(fake_artifact(sleep=0.3, tag=i), key=KEY, options=RunOptions(repeat=1))
                for i in range(6)]
        deadline = time.monotonic() + 60
        while not all(j.done() for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        results = [j.result(0) for j in jobs]
        out: list[LogRecord] = []
        for idx, res in enumerate(results, start=10):
            runner._record(task, idx, res, 0.0, out)
        # A result that no device measured (a failed build) keeps the task's fingerprint.
        runner._record(task, 20, MeasureResult.error(Outcome.COMPILE_ERROR, "no", flops=1.0), 0.0, out)

    by_device = {r.device_name: machine_identity(r.fingerprint) for r in out}
    assert by_device == {"pi-a72": machine_identity(A72), "pi-a76": machine_identity(A76), "": by_device[""]}, \
        two_machines.logs()
    assert by_device[""] == machine_identity(task.fingerprint)
    assert all(r.fingerprint.get("probe") for r in out if r.device_name)  # the whole fingerprint, as registered
    back = LogRecord.from_json(out[0].to_json())
    assert back.device_name == out[0].device_name and back.fingerprint == out[0].fingerprint
