"""Who gets in: the token on every connection, no handler before authentication,
constant-time proof checks, replayed and reflected handshakes refused, uploads that
cannot name a path, and kernels that run as the device server's own user.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rpc import auth, codec
from rpc.client import AsyncClient
from rpc.errors import AuthError
from rpc.server import DeviceServer
from rpc.tracker import Tracker
from rpc.transport import Connection, open_connection, start_server
from tests.rpc.fake_backend import KIND as FAKE_KIND
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import ROOT, LocalFarm
from tests.support.fuzz import frame
from tests.support.procs import descendants

TOKEN = b"s3cret-token-for-tests"
OPS = ["ping", "has", "submit", "lease", "release", "summary", "describe", "register", "heartbeat", "result",
       "need_artifact", "job"]


def _recording_tracker() -> tuple[Tracker, list[str]]:
    tracker = Tracker(TOKEN, handshake_timeout=2.0, frame_timeout=2.0)
    calls: list[str] = []

    def wrap(name: str, fn: Any, is_async: bool) -> Any:
        if is_async:
            async def rec(*a: Any) -> Any:
                calls.append(name)
                return await fn(*a)
            return rec

        def rec_sync(*a: Any) -> Any:
            calls.append(name)
            return fn(*a)
        return rec_sync

    tracker._client_ops = {k: wrap(k, v, True) for k, v in tracker._client_ops.items()}
    tracker._device_ops = {k: wrap(k, v, False) for k, v in tracker._device_ops.items()}
    for attr in ("_serve_client", "_serve_device"):
        setattr(tracker, attr, wrap(attr, getattr(tracker, attr), True))
    return tracker, calls


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, codec.Message]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Connection(reader, writer, limits=codec.PREAUTH_LIMITS)
    hello = await conn.recv(idle_timeout=5)
    return reader, writer, hello


async def _closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the tracker sends until it closes the connection."""
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(4096):
            out += chunk
    return out


def test_no_tracker_handler_runs_before_authentication() -> None:
    async def main() -> None:
        tracker, calls = _recording_tracker()
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            for op in OPS:  # an op in place of the auth message
                reader, writer, _ = await _raw(port)
                writer.write(frame({"op": op, "rid": 1, "key": "k", "hashes": [], "capacity": 1}))
                await writer.drain()
                await _closed(reader)
                writer.close()
            for token in (b"wrong-token", b""):  # a handshake with the wrong token, then ops anyway
                reader, writer, hello = await _raw(port)
                nonce = secrets.token_hex(32)
                proof = auth.proof(token or b"x", "kf-dialer", 1, "client", hello.header["nonce"], nonce)
                writer.write(frame({"op": "auth", "version": 1, "role": "client", "nonce": nonce, "proof": proof}))
                for op in OPS:
                    writer.write(frame({"op": op, "rid": 2}))
                await writer.drain()
                replies, _ = codec.decode_frames(await _closed(reader), codec.Limits())
                assert [m.op for m in replies] == ["error"] and replies[0].header["error"]["type"] == "AuthError"
                writer.close()
            assert calls == [], f"handlers ran before authentication: {calls}"
            assert tracker.stats["bad_connections"] == len(OPS) + 2
            assert tracker.stats["jobs_submitted"] == 0 and not tracker.devices
            # control: the same recorder does see an authenticated client's ops
            client = await AsyncClient.connect(f"127.0.0.1:{port}", TOKEN)
            await client.call("ping")
            await client.close()
            assert calls == ["_serve_client", "ping"]
        finally:
            await tracker.stop()

    asyncio.run(main())


def test_no_device_handler_runs_before_authentication() -> None:
    """The device server dials out; a fake tracker sends a job where the hello belongs."""
    art = fake_artifact("ok", tag="pre-auth")

    async def main() -> None:
        attempts: list[int] = []
        authed = asyncio.Event()

        async def evil(conn: Connection) -> None:
            attempts.append(1)
            if len(attempts) <= 3:
                await conn.send({"op": "job", "job_id": "evil", "artifact": art.header(), "options": {}}, [art.code])
                await conn.send({"op": "registered", "device_id": "d", "heartbeat_s": 1.0})
                await asyncio.sleep(0.3)
                return
            await auth.accept(conn, TOKEN)  # control: after a real handshake the job op does run
            conn.limits = codec.Limits()
            await conn.recv(idle_timeout=5)  # register
            await conn.send({"op": "registered", "device_id": "d", "heartbeat_s": 1.0})
            await conn.send({"op": "job", "job_id": "good", "artifact": art.header(), "options": {}}, [art.code])
            await conn.recv(idle_timeout=10)
            authed.set()

        srv = await start_server(evil, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        dev = DeviceServer(f"127.0.0.1:{port}", "k", TOKEN, kind=FAKE_KIND, backoff_base=0.05, backoff_cap=0.1)
        ran: list[str] = []
        real = dev._ops["job"]
        dev._ops["job"] = lambda conn, msg, tasks: (ran.append(str(msg.header.get("job_id"))), real(conn, msg, tasks))
        task = asyncio.create_task(dev.run_forever())
        try:
            async with asyncio.timeout(60):
                await authed.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            srv.close()
        assert len(attempts) >= 4
        assert ran == ["good"], f"job handler calls: {ran}"

    asyncio.run(main())


def test_proofs_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    src = inspect.getsource(auth)
    assert "hmac.compare_digest" in inspect.getsource(auth.check_proof)
    # no proof or token is ever compared with == / != anywhere in the handshake
    assert not re.search(r"(proof|token|want)\w*\s*[!=]=|[!=]=\s*\w*(proof|token|want)", src)
    import hmac

    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)

    async def main() -> None:
        tracker = Tracker(TOKEN)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            client = await AsyncClient.connect(f"127.0.0.1:{port}", TOKEN)
            await client.close()
        finally:
            await tracker.stop()

    asyncio.run(main())
    assert len(seen) == 2, "each side checks the other's proof with compare_digest"


def test_replayed_and_reflected_handshakes_are_refused() -> None:
    async def main() -> None:
        tracker = Tracker(TOKEN, handshake_timeout=2.0)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            # a genuine handshake, recorded
            reader, writer, hello = await _raw(port)
            nonce = secrets.token_hex(32)
            recorded = {"op": "auth", "version": 1, "role": "client", "nonce": nonce,
                        "proof": auth.proof(TOKEN, "kf-dialer", 1, "client", hello.header["nonce"], nonce)}
            writer.write(frame(recorded))
            await writer.drain()
            conn = Connection(reader, writer)
            welcome = await conn.recv(idle_timeout=5)
            assert welcome.op == "welcome"
            writer.close()
            # replayed on a new connection (new server nonce): refused
            reader, writer, hello2 = await _raw(port)
            assert hello2.header["nonce"] != hello.header["nonce"]
            writer.write(frame(recorded))
            await writer.drain()
            replies, _ = codec.decode_frames(await _closed(reader), codec.Limits())
            assert [m.header.get("error", {}).get("type") for m in replies] == ["AuthError"]
            writer.close()
            # reflected: the acceptor's proof offered back as a dialer's proof
            reader, writer, hello3 = await _raw(port)
            refl = dict(recorded, proof=auth.proof(TOKEN, "kf-acceptor", 1, "client", hello3.header["nonce"], nonce))
            writer.write(frame(refl))
            await writer.drain()
            replies, _ = codec.decode_frames(await _closed(reader), codec.Limits())
            assert [m.header.get("error", {}).get("type") for m in replies] == ["AuthError"]
            writer.close()
            assert tracker.stats["bad_connections"] == 2
        finally:
            await tracker.stop()

    asyncio.run(main())


def test_dialer_refuses_an_impostor_tracker() -> None:
    async def main() -> None:
        async def impostor(conn: Connection) -> None:
            await conn.send({"op": "hello", "versions": [1], "nonce": secrets.token_hex(32)})
            msg = await conn.recv(idle_timeout=5)
            await conn.send({"op": "welcome", "version": 1, "proof": msg.header["proof"]})  # reflect the client's
            await asyncio.sleep(1)

        srv = await start_server(impostor, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        conn = await open_connection("127.0.0.1", port)
        with pytest.raises(AuthError):
            await auth.dial(conn, TOKEN, "client")
        conn.abort()
        srv.close()

    asyncio.run(main())


def test_upload_names_cannot_escape_the_work_directory(tmp_path: Path) -> None:
    """Every string of an upload's header is path-like; the device never writes a file."""
    from farm.records.artifact import ArgSpec, Artifact

    farm = LocalFarm(tmp_path / "farm", heartbeat=0.5)
    workdir = tmp_path / "device-workdir"
    workdir.mkdir()
    tag = secrets.token_hex(4)
    evil = f"../../escape-{tag}"
    try:
        farm.start_tracker()
        # a real CPU device server started in its own work directory
        proc = subprocess.Popen([sys.executable, "-m", "rpc.cli", "serve", "--tracker", farm.address, "--key", "sec",
                                 "--kind", "cpu", "--name", evil, "--load-grace", "1"],
                                cwd=workdir, env=farm.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = farm.client()
            farm.wait_devices(client, 1, "sec", timeout=60)
            before = set(tmp_path.rglob("*"))
            for code in (b"\x7fELF" + b"\0" * 60, b"/etc/passwd"):
                art = Artifact(target=evil, triple="x86_64-unknown-linux-gnu", cpu=evil, features=evil, kind="object",
                               code=code, args=(ArgSpec(evil, (4,), "float32", "out"),), flops=1.0,
                               workload={"name": evil, "args": [evil]}, entry=evil)
                jid = client.submit(art.header(), art.code, "sec", {"timeout_s": 5})
                assert client.result(jid, timeout=60)["outcome"] == "LOAD_ERROR"
            after = set(tmp_path.rglob("*"))
            new = {p for p in after - before if p.parent != farm.workdir}
            assert not new, f"files appeared: {new}"
            assert list(workdir.iterdir()) == [], "the device wrote into its work directory"
            for base in (workdir, tmp_path, Path("/tmp"), ROOT):
                assert not (base / f"escape-{tag}").exists() and not (base.parent / f"escape-{tag}").exists()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        assert not farm.close()


def test_kernels_run_as_the_servers_own_user(tmp_path: Path) -> None:
    # Nothing on the device side changes identity: no setuid/setgid anywhere in rpc/ or devices/.
    for pkg in ("rpc", "devices"):
        for f in (ROOT / pkg).glob("*.py"):
            assert not re.search(r"\bset(e|re|res)?[ug]id\b|initgroups", f.read_text()), f
    farm = LocalFarm(tmp_path / "farm", heartbeat=0.5)
    try:
        farm.start_tracker()
        srv = farm.start_server("uid")
        client = farm.client()
        farm.wait_devices(client, 1, "uid")
        art = fake_artifact("ok", tag="uid")
        res = client.result(client.submit(art.header(), art.code, "uid", {"repeat": 1, "timeout_s": 5}), timeout=30)
        assert res["outcome"] == "OK"
        pid = int(res["extra"]["pid"])  # the job child that ran it (still warm)
        assert pid != srv.pid and pid in descendants(srv.pid)

        def uids(p: int) -> list[str]:
            line = next(ln for ln in Path(f"/proc/{p}/status").read_text().splitlines() if ln.startswith("Uid:"))
            return line.split()[1:]

        assert uids(srv.pid) == [str(os.getuid())] * 4
        assert uids(int(pid)) == [str(os.getuid())] * 4, "the job child runs as the server's user"
    finally:
        assert not farm.close()
