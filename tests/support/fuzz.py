"""Inputs for fuzzing the farm's wire: random and mutated frames, from a seeded RNG.

Pure generators (no I/O), used by ``tests.support.fuzz_targets`` against a real
tracker and a real device server, and by benchmarks/bench_reliability.py.

Pre-authentication inputs are whole byte strings sent on a fresh connection:
random bytes, a valid preamble then garbage, huge length headers, truncated
frames, bad JSON bodies, blob tables that do not add up, deep nesting, and
well-formed messages that are not a valid ``auth`` (wrong types, other ops).
Post-authentication inputs are single well-framed messages whose fields have
wrong types or values (NaN, huge ints, nested junk), for a client, a device,
or (towards a device server) a tracker.
"""
from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from typing import Any

from rpc import codec

PREFIX = codec.PREFIX


def frame_raw(json_text: bytes, blobs: tuple[bytes, ...] = (), blob_len: int | None = None) -> bytes:
    """A frame around an arbitrary JSON text (which may be invalid on purpose)."""
    total = sum(len(b) for b in blobs) if blob_len is None else blob_len
    return PREFIX.pack(codec.MAGIC, codec.FRAME_FORMAT, len(json_text), total) + json_text + b"".join(blobs)


def frame(header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> bytes:
    """A well-formed frame; NaN/Infinity allowed (a peer may send them)."""
    if blobs:
        header = {**header, "_blobs": [len(b) for b in blobs]}
    return frame_raw(json.dumps(header, allow_nan=True).encode(), blobs)


# Values of the wrong type or a hostile value for any field.
def junk_value(rng: random.Random, depth: int = 0) -> Any:
    pool: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: -1, lambda: 0, lambda: 2**70, lambda: -(2**63), lambda: 1e308,
        lambda: float("nan"), lambda: float("inf"), lambda: -0.5, lambda: "", lambda: "x" * rng.randint(1, 300),
        lambda: "../../etc/passwd", lambda: "\u202e\x00\ufffd", list, dict, lambda: [1, "a", None],
        lambda: {"hash": 5}, lambda: rng.randbytes(8).hex(),
    ]
    if depth < 2:
        pool.append(lambda: {str(rng.randint(0, 9)): junk_value(rng, depth + 1) for _ in range(rng.randint(1, 3))})
        pool.append(lambda: [junk_value(rng, depth + 1) for _ in range(rng.randint(1, 3))])
    return rng.choice(pool)()


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _valid_auth(rng: random.Random) -> dict[str, Any]:
    return {"op": "auth", "version": 1, "role": rng.choice(["client", "device"]), "nonce": rng.randbytes(32).hex(),
            "proof": rng.randbytes(32).hex()}


def _mutate(rng: random.Random, msg: dict[str, Any]) -> dict[str, Any]:
    """Replace, drop or add fields of a message with junk."""
    out = dict(msg)
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        fields = [k for k in out if k != "op"] or ["x"]
        if r < 0.6:
            out[rng.choice(fields)] = junk_value(rng)
        elif r < 0.8:
            out.pop(rng.choice(fields), None)
        else:
            out[rng.choice(["rid", "_blobs", "op2", "job_id", "key"])] = junk_value(rng)
    if rng.random() < 0.1:
        out["op"] = junk_value(rng)
    return out


def preauth_input(rng: random.Random) -> tuple[str, bytes]:
    """(category, bytes) for a fresh connection that has not authenticated."""
    kind = rng.randrange(10)
    if kind == 0:
        return "random", rng.randbytes(rng.choice([0, 1, 5, 11, 12, 13, 64, 500, 5000]))
    if kind == 1:
        return "preamble+garbage", codec.MAGIC + struct.pack(">H", codec.FRAME_FORMAT) + rng.randbytes(
            rng.randint(0, 200)
        )
    if kind == 2:
        big = rng.choice([4097, 1 << 20, 1 << 31, 0xFFFFFFFF])
        jl, bl = (big, rng.randint(0, 10)) if rng.random() < 0.5 else (rng.randint(1, 10), big)
        return "huge-length", PREFIX.pack(codec.MAGIC, codec.FRAME_FORMAT, jl, bl) + rng.randbytes(rng.randint(0, 64))
    if kind == 3:
        whole = frame(_valid_auth(rng))
        return "truncated", whole[: rng.randint(1, len(whole) - 1)]
    if kind == 4:
        magic = rng.choice([b"KG", b"\x00\x00", b"GE", b"kf"])
        fmt = rng.choice([0, 2, 0xFFFF]) if magic == codec.MAGIC else codec.FRAME_FORMAT
        return "bad-magic/format", PREFIX.pack(magic, fmt, 10, 0) + b'{"op":"x"}'
    if kind == 5:
        body = rng.choice([b"not json", b"[1,2]", b'"op"', b"{}", b'{"op": 5}', b"\xff\xfe", b'{"op":"auth"',
                           deep_json(rng.choice([50, 1000, 2000]))])
        return "bad-json", frame_raw(body)
    if kind == 6:
        hdr = json.dumps({"op": "auth", "_blobs": junk_value(rng)}).encode()
        return "bad-blobs", frame_raw(hdr, (b"abc",), blob_len=rng.choice([0, 3, 7]))
    if kind == 7:
        return "auth-wrong-types", frame(_mutate(rng, _valid_auth(rng)))
    if kind == 8:
        op = rng.choice(["submit", "summary", "register", "job", "result", "heartbeat", "lease", "ping"])
        return "op-before-auth", frame({"op": op, "rid": 1, "key": "probe", "x": junk_value(rng)})
    # several frames back to back, the second one garbage
    return "pipelined", frame(_valid_auth(rng)) + rng.randbytes(rng.randint(1, 40))


CLIENT_OPS: list[dict[str, Any]] = [
    {"op": "ping"}, {"op": "has", "hashes": ["a" * 64]}, {"op": "summary"}, {"op": "describe", "key": "fuzz"},
    {"op": "submit", "key": "fuzz-nodev", "artifact": {"hash": "0" * 64, "kind": "object"}, "options": {"timeout_s": 1},
     "priority": 0, "queue_timeout_s": 1.0, "lease_id": None},
    {"op": "lease", "key": "fuzz-nodev", "queue_timeout_s": 0.5, "priority": 0},
    {"op": "release", "lease_id": "lease1"},
]

DEVICE_OPS: list[dict[str, Any]] = [
    {"op": "heartbeat"}, {"op": "result", "job_id": "job1", "result": {"outcome": "OK", "costs": [1.0]}},
    {"op": "need_artifact", "job_id": "job1", "hash": "0" * 64},
]

TRACKER_OPS: list[dict[str, Any]] = [
    {"op": "job", "job_id": "j", "artifact": {"hash": "0" * 64}, "options": {"timeout_s": 1}},
    {"op": "heartbeat_ack"}, {"op": "registered", "device_id": "dev1", "heartbeat_s": 1.0},
]


def postauth_input(rng: random.Random, ops: list[dict[str, Any]]) -> tuple[str, bytes]:
    """(category, one frame) for an authenticated connection: an op of ``ops`` with junk fields,
    now and then an unknown op, a junk blob, or raw garbage (which ends the connection)."""
    r = rng.random()
    if r < 0.03:
        return "garbage-after-auth", rng.randbytes(rng.randint(12, 40))
    if r < 0.08:
        return "unknown-op", frame({"op": rng.choice(["eval", "__class__", "shutdown", "x" * 50]), "rid": 1})
    msg = _mutate(rng, {"rid": rng.randint(0, 1 << 40), **rng.choice(ops)})
    blobs: tuple[bytes, ...] = (rng.randbytes(rng.randint(0, 300)),) if rng.random() < 0.2 else ()
    return f"wrong-fields:{msg.get('op')!s:.20}", frame(msg, blobs)


def register_message(rng: random.Random, key: str) -> dict[str, Any]:
    """A device's ``register``, sometimes mutated (never onto another key than ``key``)."""
    msg: dict[str, Any] = {"op": "register", "key": key, "capacity": 1, "name": "fuzz", "fingerprint": {"kind": "fuzz"},
                           "artifacts": []}
    if rng.random() < 0.5:
        msg = _mutate(rng, msg)
        msg["op"] = "register"
        if "key" in msg and msg["key"] != key:
            msg["key"] = junk_value(rng) if rng.random() < 0.5 else key
            if isinstance(msg["key"], str):
                msg["key"] = key
    return msg
