"""Codec, handshake proofs and content hashes, without processes."""
from __future__ import annotations

import asyncio
import json
import struct

import pytest

from rpc import auth, codec
from rpc.artifacts import ArtifactStore, checked_hash, content_hash
from rpc.errors import (
    AuthError,
    BadRequest,
    DeadlineExceeded,
    FrameTooLarge,
    KernelCrashed,
    ProtocolError,
    RemoteError,
    VersionMismatch,
    failure_for,
    from_wire,
    to_wire,
)
from rpc.transport import Connection, parse_address, start_server


def test_roundtrip_with_blobs():
    data = codec.encode_bytes({"op": "job", "x": [1, "two"]}, [b"\x00\x01", b"", b"abc"])
    msgs, rest = codec.decode_frames(data + data[:5])
    assert rest == data[:5]
    assert len(msgs) == 1 and msgs[0].op == "job" and msgs[0].header == {"op": "job", "x": [1, "two"]}
    assert msgs[0].blobs == (b"\x00\x01", b"", b"abc")


@pytest.mark.parametrize(
    "prefix, err",
    [
        (b"GET / HTTP/1", ProtocolError),
        (struct.pack(">2sHII", b"KF", 7, 10, 0), ProtocolError),
        (struct.pack(">2sHII", b"KF", 1, 0, 0), FrameTooLarge),
        (struct.pack(">2sHII", b"KF", 1, 10, 0xFFFFFFFF), FrameTooLarge),
        (struct.pack(">2sHII", b"KF", 1, 0xFFFFFFF0, 0), FrameTooLarge),
    ],
)
def test_bad_prefixes_refused_before_body(prefix, err):
    with pytest.raises(err):
        codec.parse_prefix(prefix)


def test_preauth_cap_and_encode_cap():
    with pytest.raises(FrameTooLarge):
        codec.parse_prefix(struct.pack(">2sHII", b"KF", 1, 100, 5000), codec.PREAUTH_LIMITS)
    with pytest.raises(FrameTooLarge):
        codec.encode({"op": "x"}, [b"a" * 100], codec.Limits(max_frame=50))


@pytest.mark.parametrize(
    "header, blob_len",
    [(b"not json", 0), (b"[1,2]", 0), (b'{"no_op": 1}', 0), (b'{"op": "x", "_blobs": [5]}', 4), (b'{"op": 3}', 0)],
)
def test_bad_bodies(header, blob_len):
    with pytest.raises(ProtocolError):
        codec.decode_body(len(header), blob_len, header + b"x" * blob_len)


def test_error_wire_roundtrip_keeps_types():
    for exc in (DeadlineExceeded("late"), AuthError("no"), BadRequest("bad"), VersionMismatch("v")):
        back = from_wire(to_wire(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    unknown = from_wire({"type": "os.system", "message": "m"})
    assert isinstance(unknown, RemoteError) and unknown.remote_type == "os.system"
    assert isinstance(failure_for("RUNTIME_ERROR", "SIGSEGV"), KernelCrashed)


def test_proofs_bind_nonces_roles_and_direction():
    t = b"secret"
    p = auth.proof(t, "kf-dialer", 1, "client", "a" * 64, "b" * 64)
    assert auth.check_proof(p, p)
    assert not auth.check_proof(p, auth.proof(t, "kf-acceptor", 1, "client", "a" * 64, "b" * 64))
    assert not auth.check_proof(p, auth.proof(t, "kf-dialer", 1, "device", "a" * 64, "b" * 64))
    assert not auth.check_proof(p, auth.proof(t, "kf-dialer", 1, "client", "c" * 64, "b" * 64))
    assert not auth.check_proof(p, auth.proof(b"other", "kf-dialer", 1, "client", "a" * 64, "b" * 64))
    assert not auth.check_proof(p, None)


def test_content_hash_matches_farm_artifact():
    from tests.rpc.fake_backend import fake_artifact

    art = fake_artifact("ok", 0.5, tag=[1, 2])
    header = json.loads(json.dumps(art.header()))  # as it arrives off the wire
    assert content_hash(header, art.code) == art.hash == checked_hash(header, art.code)
    with pytest.raises(BadRequest):
        checked_hash(header, art.code + b"x")
    with pytest.raises(BadRequest):
        checked_hash({**header, "flops": 1.0}, art.code)


def test_artifact_store_evicts_lru():
    s = ArtifactStore(max_bytes=10)
    s.put("a", b"12345")
    s.put("b", b"12345")
    s.get("a")
    s.put("c", b"12345")
    assert "a" in s and "c" in s and "b" not in s and s.nbytes == 10


def test_parse_address():
    assert parse_address("head:9190") == ("head", 9190)
    assert parse_address("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError):
        parse_address("head:x")


def test_handshake_over_tcp_and_replay_fails():
    """Both sides prove the token; a recorded auth message is useless on a new connection."""

    async def main() -> None:
        recorded: list[dict] = []

        async def handler(conn: Connection) -> None:
            role, _ = await auth.accept(conn, b"tok")
            await conn.send({"op": "hi", "role": role})

        server = await start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = Connection(reader, writer)
        orig_request = conn.request

        async def spy(header, blobs=(), timeout=None):
            recorded.append(header)
            return await orig_request(header, blobs, timeout)

        conn.request = spy  # type: ignore[method-assign]
        assert await auth.dial(conn, b"tok", "client") == max(codec.PROTOCOL_VERSIONS)
        assert (await conn.recv(5)).header == {"op": "hi", "role": "client"}
        await conn.close()

        # Replay the recorded proof on a fresh connection: the server's nonce differs.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = Connection(reader, writer)
        assert (await conn.recv(5)).op == "hello"
        reply = await conn.request(recorded[0], timeout=5)
        assert reply.op == "error" and reply.header["error"]["type"] == "AuthError"
        await conn.close()

        # Wrong token, and a dialer that speaks no common version.
        for token, versions, err in ((b"bad", (1,), AuthError), (b"tok", (99,), VersionMismatch)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = Connection(reader, writer)
            with pytest.raises(err):
                await auth.dial(conn, token, "client", versions=versions)
            await conn.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
