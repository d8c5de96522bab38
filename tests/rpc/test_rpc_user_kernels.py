"""User kernels on real device servers: checked against a reference that needs no user code there.

A real tracker and real CPU device servers (subprocesses, loopback, port 0). The reference is
built here (farm.client.reference) and travels content-addressed; the device compares.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import farm
from farm import te
from farm.client.reference import workload_reference
from farm.client.session import Session
from farm.records.measure import Outcome, RunOptions
from farm.workloads.registry import Workload, build_workload
from rpc.server import DeviceServer
from tests.rpc.harness import LocalFarm

OPTS = RunOptions(repeat=1, min_repeat_ms=0, timeout_s=20)


def _scale_kernel(name: str, factor: float, reference: Any = None) -> Workload:
    @farm.template(name, reference=reference)
    def kernel(cfg, n, m):  # type: ignore[no-untyped-def]
        A = te.placeholder((n, m), name="A")
        B = te.compute((n, m), lambda i, j: A[i, j] * factor + 1.0, name="B")
        s = te.create_schedule(B.op)
        cfg.define_knob("vec", [0, 1])
        cfg.define_knob("par", [0, 1])
        if cfg["vec"].val:
            s[B].vectorize(B.op.axis[1])
        if cfg["par"].val:
            s[B].parallel(B.op.axis[0])
        return s, [A, B]

    return kernel


@pytest.fixture
def cpu_farm(local_farm: LocalFarm) -> LocalFarm:
    local_farm.start_server("cpu", "cpu", name="cpu-a")
    return local_farm


def _submit(session: Session, wl: Workload, shape: tuple[int, ...], index: int, target: str,
            code: bytes | None = None) -> Any:
    art = build_workload(wl, shape, index, target).artifact
    if code is not None:
        art = replace(art, code=code)
    ref = workload_reference(wl, shape, art, target, OPTS)
    return session.submit(art.with_reference(ref), key="cpu", options=OPTS, reference=ref)


def test_a_reference_that_disagrees_is_wrong_answer(cpu_farm: LocalFarm) -> None:
    good = _scale_kernel("t_scale_ok", 3.25, reference=lambda a: a.astype(np.float64) * 3.25 + 1.0)
    bad = _scale_kernel("t_scale_badref", 3.25, reference=lambda a: a.astype(np.float64) * 2.0 + 1.0)
    with Session(cpu_farm.client()) as session:
        cpu_farm.wait_devices(session.client, 1, timeout=60)
        target = session.target("cpu")
        ok = _submit(session, good, (7, 50), 1, target).result(timeout=60)
        assert ok.outcome is Outcome.OK and ok.checked, ok
        wrong = _submit(session, bad, (7, 50), 1, target).result(timeout=60)
        assert wrong.outcome is Outcome.WRONG_ANSWER and "output B" in wrong.message, wrong


def test_altered_code_is_caught_by_the_naive_reference(cpu_farm: LocalFarm) -> None:
    wl = _scale_kernel("t_scale_patched", 3.25)  # no reference=: the naive schedule is the reference
    with Session(cpu_farm.client()) as session:
        cpu_farm.wait_devices(session.client, 1, timeout=60)
        target = session.target("cpu")
        art = build_workload(wl, (9, 40), 0, target).artifact
        constant = np.float32(3.25).tobytes()
        assert constant in art.code, "the scale constant is not in the object as a float32"
        patched = art.code.replace(constant, np.float32(4.25).tobytes())
        control = _submit(session, wl, (9, 40), 0, target).result(timeout=60)
        assert control.outcome is Outcome.OK and control.checked, control
        r = _submit(session, wl, (9, 40), 0, target, code=patched).result(timeout=60)
        assert r.outcome is Outcome.WRONG_ANSWER, r


def test_the_naive_reference_is_uploaded_once_per_device_and_task(cpu_farm: LocalFarm) -> None:
    wl = _scale_kernel("t_scale_uploads", 1.5)
    with Session(cpu_farm.client()) as session:
        cpu_farm.wait_devices(session.client, 1, timeout=60)
        target = session.target("cpu")
        before = session.summary()["stats"]
        jobs = [_submit(session, wl, (16, 64), i, target) for i in range(4)]  # four configs, one task
        results = [j.result(timeout=60) for j in jobs]
        assert all(r.outcome is Outcome.OK and r.checked for r in results), results
        after = session.summary()["stats"]
    # four candidates and ONE reference reached the tracker and the device
    assert after["client_uploads"] - before["client_uploads"] == 5
    assert after["device_uploads"] - before["device_uploads"] == 5


def test_any_te_kernel_measured_from_a_laptop_is_checked(cpu_farm: LocalFarm) -> None:
    n = 48
    a = te.placeholder((n, n), name="A")
    b = te.compute((n, n), lambda i, j: a[j, i] * 2.0, name="T")
    with Session(cpu_farm.client()) as session:
        cpu_farm.wait_devices(session.client, 1, timeout=60)
        r = session.measure(te.create_schedule(b.op), [a, b], key="cpu", options=OPTS)
        assert r.outcome is Outcome.OK and r.checked, r
        # built wrong on purpose: the module claims to be this compute, its code is another's
        wrong_c = te.compute((n, n), lambda i, j: a[i, j] * 2.0, name="T")
        mod = farm.build(te.create_schedule(wrong_c.op), [a, wrong_c], session.target("cpu"))
        r = session.measure(mod, [a, b], key="cpu", options=OPTS)
        assert r.outcome is Outcome.WRONG_ANSWER, r


def test_a_protocol_1_device_never_runs_a_job_it_cannot_check(local_farm: LocalFarm) -> None:
    """An older server (it offers protocol 1 only) is never given the reference: the job ends
    LOAD_ERROR naming the version, instead of running unchecked. Built-in jobs still run there."""
    server = DeviceServer(local_farm.address, "old", local_farm.token.encode(), kind="cpu", name="old-1",
                          protocol_versions=(1,), backoff_cap=0.5)
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(server.run_forever()))
        try:
            loop.run_until_complete(task[0])
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, name="old-device", daemon=True)
    thread.start()
    try:
        with Session(local_farm.client()) as session:
            local_farm.wait_devices(session.client, 1, key="old", timeout=60)
            wl = _scale_kernel("t_scale_old", 2.0)
            target = session.target("old")
            art = build_workload(wl, (8, 8), 0, target).artifact
            ref = workload_reference(wl, (8, 8), art, target, OPTS)
            r = session.submit(art.with_reference(ref), key="old", options=OPTS, reference=ref).result(timeout=60)
            assert r.outcome is Outcome.LOAD_ERROR and "protocol 1" in r.message, r
            builtin = build_workload("matmul", (16, 16, 16), 0, target).artifact
            r = session.measure(builtin, key="old", options=OPTS)
            assert r.outcome is Outcome.OK and r.checked, r
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_farm_measure_a_user_kernel_from_its_file(cpu_farm: LocalFarm) -> None:
    """The laptop path with your own kernel: `farm measure ... FILE.py:function` builds it here, the
    device checks it against the naive schedule (no user code on the device)."""
    import json
    import subprocess
    import sys

    from tests.rpc.harness import ROOT

    with Session(cpu_farm.client()) as session:
        cpu_farm.wait_devices(session.client, 1, timeout=60)
    cmd = [sys.executable, "-m", "farm.cli", "measure", "--tracker", cpu_farm.address, "--key", "cpu",
           "configs/kernels/ops.py:layernorm", "--shape", "64,128", "--config", "3", "--json"]
    r = subprocess.run(cmd, cwd=ROOT, env=cpu_farm.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["outcome"] == "OK" and out["checked"] is True, out
