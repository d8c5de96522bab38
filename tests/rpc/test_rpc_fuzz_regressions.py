"""Inputs the fuzzer (tests/chaos/test_fuzz.py) found to hurt, kept as fast regressions."""
from __future__ import annotations

import asyncio

import pytest

from rpc import codec
from rpc.client import AsyncClient
from rpc.errors import BadRequest, ConnectionLost, ProtocolError
from rpc.tracker import Tracker
from tests.support.fuzz import deep_json, frame, frame_raw

TOKEN = b"regressions"


@pytest.mark.parametrize("body", [deep_json(5000), b'{"op":"x","a":' + deep_json(3000) + b"}"])
def test_deep_nesting_is_a_protocol_error_not_a_crash(body: bytes) -> None:
    # RecursionError used to escape decode_body and kill a device server (and log a traceback in the tracker).
    with pytest.raises(ProtocolError):
        codec.decode_frames(frame_raw(body))


@pytest.mark.parametrize("const", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_refused(const: bytes) -> None:
    # NaN deadlines never compare true and would stall the tracker's deadline heap.
    with pytest.raises(ProtocolError, match="non-finite"):
        codec.decode_frames(frame_raw(b'{"op":"submit","queue_timeout_s":' + const + b"}"))


def test_tracker_answers_overflowing_and_mistyped_fields_without_dropping() -> None:
    async def main() -> None:
        tracker = Tracker(TOKEN)
        _, port = await tracker.start("127.0.0.1", 0)
        try:
            c = await AsyncClient.connect(f"127.0.0.1:{port}", TOKEN)
            # 1e400 parses as inf: int(inf) raised OverflowError, which dropped the connection
            c.conn.writer.write(frame_raw(b'{"op":"lease","rid":7,"key":"k","priority":1e400}'))
            fut = asyncio.get_running_loop().create_future()
            c._calls[7] = fut
            with pytest.raises(BadRequest):
                await asyncio.wait_for(fut, 5)
            await c.call("ping", timeout=5)  # still served on the same connection
            await c.close()
            # a device whose register carries a non-list 'artifacts' is refused cleanly
            from rpc import auth
            from rpc.transport import open_connection

            conn = await open_connection("127.0.0.1", port)
            await auth.dial(conn, TOKEN, "device")
            conn.writer.write(frame({"op": "register", "key": "k", "capacity": 1, "fingerprint": {}, "artifacts": 1.5}))
            answer = await conn.recv(idle_timeout=5)  # told why (the field named), then dropped
            assert answer.op == "error" and answer.header["error"]["type"] == "BadRequest"
            assert "artifacts" in answer.header["error"]["message"]
            with pytest.raises(ConnectionLost):
                await conn.recv(idle_timeout=5)
            conn.abort()
            assert not tracker.devices
        finally:
            await tracker.stop()

    asyncio.run(main())
