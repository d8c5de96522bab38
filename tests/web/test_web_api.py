"""The JSON API behind the page (rpc.web, rpc.view): devices, lost devices, failures, campaigns.

A device here is a raw authenticated connection that registers and answers jobs (so the test
decides every outcome); the client is rpc's own. `farm query --json` and /api/summary are the
same document.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from rpc import auth
from rpc.client import AsyncClient
from rpc.transport import Connection, parse_address
from rpc.view import MAX_CAMPAIGNS, fingerprint_summary
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import ROOT
from tests.web.support import LoopTracker, loop_tracker

FP = {"isa": "x86_64", "triple": "x86_64-unknown-linux-gnu", "cpu_name": "znver3", "cpu_model": "AMD EPYC 7B13",
      "emulated": False, "cores": 4}


def report(name: str, points: list[list[float]], *, finished: bool = False) -> dict[str, Any]:
    return {"name": name, "run": "r1", "host": "laptop", "elapsed_s": 3.0, "finished": finished,
            "tasks": [{"task": "matmul(64,64,64)@web", "workload": "matmul", "key": "web", "budget": 8,
                       "done": len(points), "errors": 1, "in_flight": 2, "best_gflops": max(p[1] for p in points),
                       "best_s": 0.001, "finished": finished, "error": "", "curve": points}]}


async def device(lt: LoopTracker, name: str, key: str = "web") -> Connection:
    host, port = parse_address(lt.address)
    conn = await auth.dial_address(host, port, lt.token, "device")
    await conn.send({"op": "register", "key": key, "capacity": 1, "name": name, "fingerprint": FP, "artifacts": []})
    assert (await conn.recv(idle_timeout=5)).op == "registered"
    return conn


async def answer_one(conn: Connection, outcome: str, message: str = "") -> None:
    while True:
        msg = await conn.recv(idle_timeout=5)
        if msg.op == "job":
            result = {"outcome": outcome, "costs": [0.001] if outcome == "OK" else [], "message": message}
            await conn.send({"op": "result", "job_id": msg.header["job_id"], "result": result})
            return


def test_devices_failures_lost_devices_and_campaigns() -> None:
    with loop_tracker(heartbeat_s=0.5) as lt:
        async def scenario() -> None:
            client = await AsyncClient.connect(lt.address, lt.token)
            await client.call("campaign_report", **report("nightly run", [[1, 1.0], [2, 1.5]]))
            a, b = await device(lt, "dev-a"), await device(lt, "dev-b", key="other")
            art = fake_artifact("wrong", tag="api")
            job = await client.submit(art.header(), art.code, "web", {"timeout_s": 5})
            await answer_one(a, "WRONG_ANSWER", "max abs error 1.0 at C[0]")
            assert (await client.result(job, timeout=5))["outcome"] == "WRONG_ANSWER"
            job = await client.submit(art.header(), art.code, "web", {"timeout_s": 5})
            while (await a.recv(idle_timeout=5)).op != "job":  # running on dev-a, which then vanishes
                pass
            a.abort()
            res = await client.result(job, timeout=10)  # no retries: lost with its device
            assert res["outcome"] == "DEVICE_LOST", res
            await client.close()
            b.abort()

        async def main() -> None:
            async with asyncio.timeout(20):
                await scenario()

        lt.tracker.queue.max_retries = 0  # the second job is DEVICE_LOST at once
        lt.run(main())
        for _ in range(200):  # the tracker sees dev-b's connection close
            devs = {d["name"]: d for d in lt.api("/api/devices")["devices"]}
            if all(d["state"] == "lost" for d in devs.values()):
                break
            time.sleep(0.05)
        assert set(devs) == {"dev-a", "dev-b"} and devs["dev-a"]["state"] == "lost" == devs["dev-b"]["state"]
        a = devs["dev-a"]
        assert a["errors_by_outcome"] == {"WRONG_ANSWER": 1, "DEVICE_LOST": 1} and a["jobs_done"] == 1
        assert a["fingerprint_summary"] == {"kind": "CPU", "isa": "x86_64", "model": "AMD EPYC 7B13",
                                            "emulated": False, "cores": 4}
        assert a["reason"] and a["lost_s"] >= 0 and "fingerprint" not in a
        s = lt.api("/api/summary")
        assert s["errors_by_outcome"] == {"WRONG_ANSWER": 1, "DEVICE_LOST": 1}
        assert [f["outcome"] for f in s["failures"]] == ["DEVICE_LOST", "WRONG_ANSWER"]  # newest first
        wrong = s["failures"][1]
        assert wrong["device"] == "dev-a" and wrong["key"] == "web" and wrong["campaign"] == "nightly run"
        assert "max abs error" in wrong["message"]
        assert {t["name"] for t in s["lost"]} == {"dev-a", "dev-b"} and s["devices"] == []
        (c,) = lt.api("/api/campaigns")["campaigns"]
        assert c["name"] == "nightly run" and c["state"] == "disconnected" and c["host"] == "laptop"
        assert c["errors_by_outcome"] == {"WRONG_ANSWER": 1, "DEVICE_LOST": 1} and c["trials_done"] == 2
        assert c["tasks"][0]["points"] == 2 and "curve" not in c["tasks"][0]
        curve = lt.api(f"/api/campaigns/{quote('nightly run')}/curve")
        assert curve["tasks"][0]["points"] == [[1, 1.0], [2, 1.5]] and curve["version"] == c["version"]
        assert lt.request("GET", "/api/campaigns/nope/curve", headers=lt.bearer()).status == 404


def test_a_device_that_comes_back_is_no_longer_lost_and_reports_replace() -> None:
    with loop_tracker() as lt:
        async def main() -> None:
            d = await device(lt, "dev-a")
            d.abort()
            client = await AsyncClient.connect(lt.address, lt.token)
            for n in range(1, 4):
                await client.call("campaign_report", **report("c", [[i, float(i)] for i in range(1, n + 1)]))
            await client.call("campaign_report", **report("c", [[1, 1.0], [2, 3.0]], finished=True))
            for _ in range(100):
                if lt.tracker.view.tombstones:
                    break
                await asyncio.sleep(0.02)
            assert [t.name for t in lt.tracker.view.tombstones.values()] == ["dev-a"]
            d = await device(lt, "dev-a")
            assert not lt.tracker.view.tombstones
            d.abort()
            await client.close()

        lt.run(main())
        (c,) = lt.api("/api/campaigns")["campaigns"]
        assert c["state"] == "finished" and c["reports"] == 4 and c["tasks"][0]["points"] == 2


def test_campaigns_are_bounded_and_a_bad_curve_point_is_refused() -> None:
    with loop_tracker() as lt:
        async def main() -> None:
            client = await AsyncClient.connect(lt.address, lt.token)
            for n in range(MAX_CAMPAIGNS + 5):
                await client.call("campaign_report", **report(f"c{n}", [[1, 1.0]]))
            bad = report("bad", [[1, 1.0]])
            bad["tasks"][0]["curve"] = [[1.0]]
            try:
                await client.call("campaign_report", **bad)
                raise AssertionError("a one-number curve point was accepted")
            except Exception as e:  # noqa: BLE001
                assert type(e).__name__ == "BadRequest" and "curve[0]" in str(e)
            await client.close()

        lt.run(main())
        names = [c["name"] for c in lt.api("/api/campaigns")["campaigns"]]
        assert len(names) == MAX_CAMPAIGNS and "bad" not in names and f"c{MAX_CAMPAIGNS + 4}" in names


def test_fingerprint_summary_of_a_gpu_and_an_emulated_board() -> None:
    gpu = fingerprint_summary({"kind": "cuda", "isa": "nvptx64", "gpu_name": "NVIDIA H100", "sm_count": 132})
    assert gpu == {"kind": "GPU", "isa": "nvptx64", "model": "NVIDIA H100", "emulated": False, "cores": 132}
    arm = fingerprint_summary({"isa": "aarch64", "cpu_name": "cortex-a72", "cpu_model": "", "emulated": True})
    assert arm["kind"] == "CPU" and arm["emulated"] and arm["model"] == "cortex-a72"


def test_farm_query_json_and_the_api_agree() -> None:
    with loop_tracker() as lt:
        conns = [lt.run(device(lt, n)) for n in ("dev-a", "dev-b")]
        env = dict(os.environ, FARM_TOKEN=lt.token.decode(), PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "farm.cli", "query", "--tracker", lt.address, "--json"], env=env,
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        query, api = json.loads(r.stdout), lt.api("/api/summary")
        assert set(query) == set(api) >= {"keys", "queues", "devices", "lost", "errors_by_outcome", "failures",
                                          "campaigns", "completed", "stats"}
        assert query["keys"] == api["keys"] and query["queues"] == api["queues"]
        moving = {"last_seen_s", "utilization", "busy_s"}
        strip = [[{k: v for k, v in d.items() if k not in moving} for d in s["devices"]] for s in (query, api)]
        assert strip[0] == strip[1] and {d["name"] for d in api["devices"]} == {"dev-a", "dev-b"}
        for c in conns:
            c.abort()


def test_a_lost_device_stays_lost_at_least_ten_minutes_and_tombstones_are_bounded() -> None:
    from rpc import view as v

    fv = v.FarmView()
    for i in range(v.MAX_TOMBSTONES + 3):
        dev = SimpleNamespace(key="k", name=f"d{i}", fingerprint={}, jobs_done=i, running=set(), last_seen=0.0)
        fv.device_joined(f"dev{i}", dev)
        fv.device_lost(f"dev{i}", "heartbeat lapsed", [], now=float(i) / 1000)
    assert len(fv.tombstones) == v.MAX_TOMBSTONES and ("k", "d0") not in fv.tombstones  # the oldest left first
    fv.prune(now=10 * 60.0)
    assert len(fv.tombstones) == v.MAX_TOMBSTONES and v.TOMBSTONE_S >= 10 * 60
    fv.prune(now=v.TOMBSTONE_S + 2.0)
    assert not fv.tombstones
