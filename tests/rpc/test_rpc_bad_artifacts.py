"""Artifacts a device must refuse: a wrong hash, another architecture (honestly labelled or
relabelled as ours), truncated bytes. Each is LOAD_ERROR (or refused before it reaches a
device), never loaded: the job child that would have mapped it is still the same process,
and the device measures a good kernel right after.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.records.artifact import Artifact
from farm.target import Target
from farm.workloads.registry import build_workload
from rpc import auth, codec
from rpc.errors import BadRequest
from rpc.server import DeviceServer
from rpc.transport import Connection, start_server
from tests.rpc.harness import LocalFarm
from tests.support.procs import descendants

KEY = "cpu-bad"


@pytest.fixture(scope="module")
def good() -> Artifact:
    return build_workload("matmul", [16, 16, 16], "default", str(Target.host())).artifact


@pytest.fixture(scope="module")
def foreign() -> Artifact:
    return build_workload("matmul", [16, 16, 16], "default", "llvm -mtriple=aarch64-linux-gnu").artifact


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[LocalFarm]:
    f = LocalFarm(tmp_path / "farm", heartbeat=0.5)
    f.start_tracker()
    try:
        yield f
    finally:
        leaked = f.close()
    assert not leaked


def _relabel(art: Artifact, like: Artifact) -> Artifact:
    """Same code, header claiming ``like``'s target (the hash is recomputed: it is honest about the lie)."""
    return dataclasses.replace(art, target=like.target, triple=like.triple, cpu=like.cpu, features=like.features)


def test_bad_artifacts_are_load_errors_never_loaded(farm: LocalFarm, good: Artifact, foreign: Artifact) -> None:
    srv = farm.start_server(KEY, "cpu")
    client = farm.client()
    farm.wait_devices(client, 1, KEY, timeout=60)

    def run(art: Artifact) -> dict:
        return client.result(client.submit(art.header(), art.code, KEY, {"repeat": 1, "timeout_s": 10}), timeout=60)

    assert run(good)["outcome"] == "OK"
    children = set(descendants(srv.pid))
    cases = {
        "aarch64 object": foreign,
        "aarch64 object labelled x86": _relabel(foreign, good),
        **{f"truncated to {n}": dataclasses.replace(good, code=good.code[:n])
           for n in (10, 63, 64, 500, len(good.code) // 2, len(good.code) - 1)},
        "zeroed ELF header": dataclasses.replace(good, code=b"\x7fELF" + b"\0" * 60),
    }
    for what, art in cases.items():
        res = run(art)
        assert res["outcome"] == "LOAD_ERROR", (what, res)
    assert set(descendants(srv.pid)) == children, "a job child died: something was loaded"
    # uploads whose code does not match their header are refused at the tracker, before any device
    header = good.header()
    for bad, code in (
        ({**header, "hash": "0" * 64}, good.code),
        ({**header, "code_size": len(good.code) + 1}, good.code),
        (header, good.code[:-1]),
    ):
        with pytest.raises(BadRequest):
            client._run(client._async.call("submit", (code,), key=KEY, artifact=bad, options={}))
    assert run(dataclasses.replace(good, meta={"again": 1}))["outcome"] == "OK", "the device still serves"


def test_device_refuses_a_wrong_hash_from_its_tracker(good: Artifact) -> None:
    """A tracker (or anyone between) that sends code not matching the hash: LOAD_ERROR on the device."""
    token = b"t0ken"
    bad_code = bytes([good.code[0] ^ 1]) + good.code[1:]

    async def main() -> dict:
        got: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

        async def tracker(conn: Connection) -> None:
            await auth.accept(conn, token)
            conn.limits = codec.Limits()
            await conn.recv(idle_timeout=10)
            await conn.send({"op": "registered", "device_id": "d", "heartbeat_s": 5.0})
            await conn.send({"op": "job", "job_id": "j", "artifact": good.header(), "options": {}}, [bad_code])
            msg = await conn.recv(idle_timeout=30)
            got.set_result(msg.header)

        srv = await start_server(tracker, "127.0.0.1", 0)
        dev = DeviceServer(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", "k", token, kind="cpu")
        task = asyncio.create_task(dev.run_forever())
        try:
            return await asyncio.wait_for(got, 60)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            srv.close()

    msg = asyncio.run(main())
    assert msg["op"] == "result" and msg["result"]["outcome"] == "LOAD_ERROR", msg
    assert "hash" in msg["result"]["message"]
