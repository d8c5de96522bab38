"""Every field that arrives over the wire, in both directions, for every op (rpc.fields).

Property: for every op of every table and every numeric, string or bool field (nested ones
included), NaN, +-inf, "nan"/"inf" strings, negatives, 1e308, wrong types and strings past
the cap are refused with BadRequest naming the field: by the table itself, by a live
tracker (client and device connections) and by a live device server (playing its tracker),
and once per op a control client's queue deadline still fires. Issue #18's reproductions
run here too: a "nan" queue timeout, a raw ``timeout_s: -1000``, and heartbeat_s values
that used to crash or silence a device.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.records.measure import MeasureResult, Outcome, RunOptions
from rpc import auth, codec, fields
from rpc.client import AsyncClient, Client
from rpc.errors import BadRequest
from rpc.server import DeviceServer
from rpc.tracker import Tracker
from rpc.transport import Connection, start_server
from tests.rpc.fake_backend import KIND as FAKE_KIND
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import ROOT, LocalFarm
from tests.support import fuzz_fields as ff

TOKEN = b"wire-fields-token"


def test_every_hostile_value_is_refused_naming_its_field() -> None:
    n, bad = ff.check_rules()
    assert n > 1500 and not bad, "\n".join(bad[:20])


def test_every_op_has_a_valid_baseline() -> None:
    for table, ops in fields.TABLES.items():
        assert set(ff.BASELINES[table]) == set(ops), table
        for op in ops:
            fields.validate(ops, op, ff.BASELINES[table][op])  # the baseline itself passes
        assert any(True for _ in ff.hostile_cases(table)), table


def test_every_handler_has_a_rule(tmp_path: Path) -> None:
    """A new op needs its row in rpc.fields: without one, the receiving side refuses it as unknown."""
    tracker = Tracker(TOKEN, log_path=str(tmp_path / "shared.jsonl"))
    try:
        assert set(tracker._client_ops) <= set(fields.CLIENT_OPS)
        assert {"register", *tracker._device_ops} <= set(fields.DEVICE_OPS)
    finally:
        tracker.log_service.close()
    assert set(DeviceServer("127.0.0.1:1", "k", TOKEN)._ops) <= set(fields.TRACKER_TO_DEVICE)


def test_the_table_matches_the_records_it_checks() -> None:
    def names(rule: fields.Obj) -> set[str]:
        assert rule.fields is not None
        return set(rule.fields)

    assert names(fields.RUN_OPTIONS) == {f.name for f in dataclasses.fields(RunOptions)}
    assert names(fields.RESULT) == set(MeasureResult(Outcome.OK).to_json())
    referenced = fake_artifact().with_reference(fake_artifact(tag="ref"))
    assert names(fields.ARTIFACT) == set(referenced.header())
    fields.check(fields.ARTIFACT, referenced.header(), "artifact")
    from farm.log import LogRecord

    rec = LogRecord(workload="w", args=(1,), target="llvm", device_key="k", config_index=0, knobs={},
                    outcome=Outcome.OK, campaign="c", task="t", workload_hash="h", checked=True, nbytes=8)
    d = rec.to_json()
    assert names(fields.LOG_RECORD) == set(d)
    log_fields = fields.LOG_RECORD.fields or {}
    for part in ("workload", "device", "config", "result"):  # every key a record writes has a rule
        rule = log_fields[part].rule
        assert isinstance(rule, fields.Obj) and set(d[part]) <= names(rule), part
    fields.check(fields.LOG_RECORD, d, "record")
    # every value of the ranges the records allow by default passes
    fields.check(fields.RUN_OPTIONS, RunOptions().to_json(), "options")


def test_live_tracker_answers_bad_request_and_deadlines_still_fire(tmp_path: Path) -> None:
    async def main() -> ff.FieldFuzzReport:
        tracker = Tracker(TOKEN, heartbeat_s=2.0, tick_s=0.05, log_path=str(tmp_path / "shared.jsonl"))
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            report = await ff.fuzz_tracker_fields(f"127.0.0.1:{port}", TOKEN)
            assert tracker.stats["jobs_submitted"] == report.ops, "a hostile submit was queued"
            assert not tracker.queue.leases and not tracker.devices
            return report
        finally:
            await tracker.stop()

    report = asyncio.run(main())
    assert report.sent > 900 and report.ops >= 12
    assert not report.wrong_answers, "\n".join(report.wrong_answers[:20])
    assert report.deadline_poisoned == 0 and max(report.deadline_s) < 2.0, report.deadline_s


def test_live_device_server_answers_bad_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def main() -> None:
        ft = ff.FieldFuzzTracker(TOKEN)
        address = await ft.start()
        dev = DeviceServer(address, "k", TOKEN, kind=FAKE_KIND, backoff_base=0.01, backoff_cap=0.05,
                           load_grace_s=0.5)
        task = asyncio.create_task(dev.run_forever())
        try:
            report = await ft.fuzz()
            assert report.sent > 300 and not report.wrong_answers, "\n".join(report.wrong_answers[:20])
            assert dev.pool.crashes == 0, "a refused job restarted the job child"
            children = {w.pid for w in dev.pool._all}
            art = fake_artifact("ok", tag="after-fuzz")
            ok = await ft.run_job(art.header(), art.code, {"repeat": 1, "timeout_s": 5}, "good")
            assert ok["outcome"] == "OK" and {w.pid for w in dev.pool._all} == children
            # the device's own run deadline still fires
            hang = fake_artifact("hang", tag="after-fuzz")
            t0 = time.monotonic()
            late = await ft.run_job(hang.header(), hang.code, {"repeat": 1, "timeout_s": 0.3}, "hang")
            assert late["outcome"] == "RUN_TIMEOUT" and time.monotonic() - t0 < 5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ft.stop()

    asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info], "a traceback in the device log"
    refused = [r.getMessage() for r in caplog.records if "registered" in r.getMessage()]
    assert refused and all("\n" not in m for m in refused)  # one clear line each


def test_client_refuses_bad_replies_and_results() -> None:
    """The client side of the table: a tracker's reply or job_done with an unusable field fails that
    call or job with BadRequest naming the field; the connection stays up."""
    cases = [c for c in ff.hostile_cases("replies") if c.field != "rid"]  # a junk rid answers nobody
    results = [c for c in ff.hostile_cases("tracker->client", "job_done") if c.field != "job_id"]

    async def main() -> None:
        async def tracker(conn: Connection) -> None:
            await auth.accept(conn, TOKEN)
            conn.limits = codec.Limits()
            while True:
                msg = await conn.recv()
                if "case" in msg.header:  # the hostile reply of case number `case`
                    c = cases[int(msg.header["case"])]
                    await conn.send({**c.header, "op": "reply", "rid": msg.header["rid"]})
                elif msg.op == "has":  # a real answer, so that submit goes ahead
                    await conn.send({"op": "reply", "rid": msg.header["rid"], "has": []})
                elif msg.op == "submit":
                    job = f"job{msg.header['rid']}-t"
                    await conn.send({"op": "reply", "rid": msg.header["rid"], "job_id": job})
                    c = results[int(msg.header["key"])]
                    await conn.send({**c.header, "job_id": job})

        srv = await start_server(tracker, "127.0.0.1", 0)
        client = await AsyncClient.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", TOKEN)
        try:
            for n, c in enumerate(cases):
                with pytest.raises(BadRequest, match=c.field.replace("[", r"\[").replace("]", r"\]")):
                    await client.call(c.op, case=n, timeout=5)
            art = fake_artifact("ok", tag="client-side")
            for n, c in enumerate(results):
                job = await client.submit(art.header(), art.code, str(n))
                with pytest.raises(BadRequest, match=c.field.replace("[", r"\[").replace("]", r"\]")):
                    await client.result(job, timeout=5)
            assert not client.lost
        finally:
            await client.close()
            srv.close()

    asyncio.run(main())


def test_nan_queue_timeout_is_refused_and_deadlines_keep_firing(local_farm: LocalFarm) -> None:
    """Issue #18, 1: a lease holds the only x86 device; a submit with queue_timeout_s "nan" used to
    sit atop the deadline heap, and `farm measure --queue-timeout 3` then waited forever."""
    local_farm.start_server("x86", name="only")
    holder = local_farm.client()
    local_farm.wait_devices(holder, 1, "x86")
    holder.lease("x86", queue_timeout_s=5)
    art = fake_artifact("ok", tag="nan")
    c = local_farm.client()
    for bad in ("nan", "inf", "-inf", 1e308, -1, "3"):
        with pytest.raises(BadRequest, match="queue_timeout_s"):
            c.submit(art.header(), art.code, "nodev", {}, queue_timeout_s=bad)
    for bad_opts in ({"timeout_s": -1000}, {"timeout_s": "nan"}, {"repeat": 0}, {"repeats": 3}):
        with pytest.raises(BadRequest, match="options"):
            c.submit(art.header(), art.code, "nodev", bad_opts)
    with pytest.raises(BadRequest, match="priority"):
        c.lease("x86", priority=float("1e300"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "farm.cli", "measure", "--tracker", local_farm.address, "--key", "x86",
                        "matmul", "--shape", "16,16,16", "--queue-timeout", "3", "--timeout", "5"],
                       cwd=ROOT, env=local_farm.env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1 and "queue deadline" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert took < 15, took  # ~3 s of queueing plus a build; it used to wait past 30 s


def test_tracker_and_server_settings_are_checked_too() -> None:
    for hb in (None, "abc", 1e300, float("inf"), float("nan"), 0, -1):
        with pytest.raises(BadRequest, match="heartbeat_s"):
            Tracker(TOKEN, heartbeat_s=hb)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="name"):
        DeviceServer("127.0.0.1:1", "k", TOKEN, name="x" * 1000)
    with pytest.raises(BadRequest, match="capacity"):
        DeviceServer("127.0.0.1:1", "k", TOKEN, capacity=0)
    with pytest.raises(BadRequest, match="timeout_s"):
        fields.validate(fields.TRACKER_TO_DEVICE, "job", {**ff.BASELINES["tracker->device"]["job"],
                                                           "options": {"timeout_s": -1000}})


def test_sync_client_submit_with_a_nan_string_is_one_clear_error(local_farm: LocalFarm) -> None:
    c: Client = local_farm.client()
    art = fake_artifact("ok", tag="nan-sync")
    with pytest.raises(BadRequest) as e:
        c.submit(art.header(), art.code, "nodev", queue_timeout_s="nan")
    assert str(e.value) == "submit: queue_timeout_s must be a number in [0, 2.592e+06], got 'nan'"


def test_a_job_the_device_refuses_fails_for_its_client_with_that_error() -> None:
    """Device -> tracker `error{job_id, error}` (a device that cannot accept a job's fields): the
    client hears BadRequest at once instead of waiting out the run budget; the device stays."""

    async def main() -> None:
        tracker = Tracker(TOKEN, tick_s=0.05)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            dev = await auth.dial_address("127.0.0.1", port, TOKEN, "device")
            await dev.send({"op": "register", "key": "k", "name": "strict"})
            assert (await dev.recv(idle_timeout=5)).op == "registered"
            client = await AsyncClient.connect(f"127.0.0.1:{port}", TOKEN)
            art = fake_artifact("ok", tag="refused")
            job = await client.submit(art.header(), art.code, "k", {"timeout_s": 5})
            msg = await dev.recv(idle_timeout=5)
            assert msg.op == "job" and msg.header["job_id"] == job
            await dev.send({"op": "error", "job_id": job,
                            "error": {"type": "BadRequest", "message": "job: options.timeout_s is too long here"}})
            with pytest.raises(BadRequest, match="device refused the job: job: options.timeout_s"):
                await client.result(job, timeout=5)
            (d,) = (await client.summary())["devices"]
            assert (d["state"], d["errors"]) == ("free", 1) and d["last_error"].startswith("BadRequest")
            await client.close()
            dev.abort()
        finally:
            await tracker.stop()

    asyncio.run(main())
