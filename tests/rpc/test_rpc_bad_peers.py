"""Hostile and broken peers against a real tracker process: each is refused
without the tracker reading a payload, nothing crashes, others are unaffected."""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest

from rpc import codec
from rpc.client import Client
from rpc.errors import AuthError
from tests.rpc.harness import ROOT, LocalFarm


def _dial(farm: LocalFarm) -> socket.socket:
    host, port = farm.address.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    hello = s.recv(4096)  # the tracker speaks first: its challenge
    msgs, _ = codec.decode_frames(hello)
    assert msgs and msgs[0].op == "hello"
    return s


def _closed_within(s: socket.socket, seconds: float) -> float:
    """Seconds until the tracker closed ``s`` (fails if it stays open longer)."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"tracker kept a bad connection open for {seconds}s")
    return time.monotonic() - t0


def _still_serving(farm: LocalFarm) -> None:
    t0 = time.monotonic()
    s = farm.client().summary()
    assert "keys" in s and time.monotonic() - t0 < 1.0


def test_garbage_bytes_dropped(local_farm: LocalFarm):
    s = _dial(local_farm)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _closed_within(s, 2.0) < 1.0
    _still_serving(local_farm)


def test_oversized_length_refused_without_reading_payload(local_farm: LocalFarm):
    s = _dial(local_farm)
    # Announce 4 GiB and send none of it: the refusal must not wait for the
    # body (frame_timeout is 2 s here) nor allocate for it.
    s.sendall(struct.pack(">2sHII", b"KF", 1, 100, 0xFFFFFF00))
    assert _closed_within(s, 2.0) < 1.0
    # Even a modest frame is too big before authentication.
    s = _dial(local_farm)
    s.sendall(codec.encode_bytes({"op": "auth", "pad": "x" * 10_000}))
    assert _closed_within(s, 2.0) < 1.0
    _still_serving(local_farm)


def test_stalled_half_frame_dropped_and_blocks_no_one(local_farm: LocalFarm):
    stalled = []
    for _ in range(3):
        s = _dial(local_farm)
        frame = codec.encode_bytes({"op": "auth", "version": 1, "role": "client", "nonce": "0" * 64, "proof": "x"})
        s.sendall(frame[: len(frame) // 2])  # half a frame, then silence
        stalled.append(s)
    silent = _dial(local_farm)  # connects and never sends anything
    _still_serving(local_farm)  # while all of them stall
    for s in stalled:
        waited = _closed_within(s, 6.0)
        assert waited < 4.0  # frame_timeout is 2 s
    assert _closed_within(silent, 6.0) < 4.0  # the handshake deadline
    _still_serving(local_farm)


def test_no_token_and_wrong_token_refused(local_farm: LocalFarm):
    s = _dial(local_farm)
    s.sendall(codec.encode_bytes({"op": "auth", "version": 1, "role": "client", "nonce": "a" * 64}))
    msgs, _ = codec.decode_frames(s.recv(4096))
    assert msgs[0].op == "error" and msgs[0].header["error"]["type"] == "AuthError"
    _closed_within(s, 2.0)
    with pytest.raises(AuthError):
        Client(local_farm.address, b"wrong-token")
    # A message other than auth first is refused too.
    s = _dial(local_farm)
    s.sendall(codec.encode_bytes({"op": "summary", "rid": 1}))
    _closed_within(s, 2.0)
    summary = local_farm.client().summary()
    assert summary["stats"]["bad_connections"] >= 2


def test_device_with_wrong_token_never_registers_and_keeps_trying(local_farm: LocalFarm):
    bad = local_farm.start_server("k", token="not-the-token")
    good = local_farm.start_server("k")
    client = local_farm.client()
    local_farm.wait_devices(client, 1)
    time.sleep(1.5)  # several backoff rounds
    s = client.summary()
    assert [d["name"] for d in s["devices"]] == [good.what]
    assert bad.alive() and s["stats"]["bad_connections"] >= 2


def test_cli_query_reports_missing_and_wrong_tokens(local_farm: LocalFarm):
    base = [sys.executable, "-m", "farm.cli", "query", "--tracker", local_farm.address]
    env = local_farm.env()
    env.pop("FARM_TOKEN")
    r = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no token" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base, cwd=ROOT, env=local_farm.env("nope"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "authentication failed" in r.stderr and "Traceback" not in r.stderr
    assert local_farm.token not in r.stderr + r.stdout
    r = subprocess.run(base + ["--json"], cwd=ROOT, env=local_farm.env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and '"keys"' in r.stdout


def test_bad_requests_answered_with_typed_errors(local_farm: LocalFarm):
    from rpc.errors import BadRequest, NoSuchLease
    from tests.rpc.fake_backend import fake_artifact

    c = local_farm.client()
    art = fake_artifact(tag="x")
    for op, fields in [("nosuchop", {}), ("submit", {"key": 5}), ("submit", {"key": "k", "artifact": {}}),
                       ("submit", {"key": "k", "artifact": {"hash": "ab", "code_size": 1}}),
                       ("submit", {"key": "k", "artifact": art.header(), "priority": "high"}),
                       ("lease", {"key": "k", "priority": "x"}), ("has", {"hashes": "nope"})]:
        with pytest.raises(BadRequest):
            blob = (art.code if fields.get("artifact") == art.header() else b"x",) if op == "submit" else ()
            c._run(c._async.call(op, blob, **fields))
    with pytest.raises(NoSuchLease):
        c.release("lease-unknown")
    assert c.summary()["stats"]["jobs_submitted"] == 0  # and the connection is still fine
