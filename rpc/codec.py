"""Frames: messages to bytes and back, with a size cap. No I/O here.

A frame is a 12-byte prefix followed by a body::

    magic b"KF" | frame format u16 | json_len u32 | blob_len u32   (big-endian)
    json header (UTF-8 object) | blob bytes

The JSON header is one object with a string ``op``; binary payloads (artifact
code) travel after it and their sizes are listed under ``"_blobs"`` so the
JSON never carries base64. The prefix is checked on its own (``parse_prefix``)
so an oversized or garbage frame is refused *before* its body is read.
Nothing is ever unpickled.

Protocol versions (what the ops mean) are negotiated in the handshake
(see ``rpc.auth``); ``FRAME_FORMAT`` only versions this byte layout.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rpc.errors import FrameTooLarge, ProtocolError

MAGIC = b"KF"
FRAME_FORMAT = 1
PREFIX = struct.Struct(">2sHII")
PREFIX_SIZE = PREFIX.size

# Versions of the message protocol this code speaks, newest last.
# 2: a job may carry a reference artifact (user kernels' checks); ops 'put' and 'artifact'.
PROTOCOL_VERSIONS = (1, 2)
REFERENCE_VERSION = 2  # the first version whose devices check a job's reference

# Default caps: headers are small; blobs are artifacts (objects or PTX).
MAX_JSON = 1 << 20
MAX_FRAME = 256 << 20
# Before authentication a peer may send only a tiny frame: no allocation on
# behalf of an unauthenticated stranger.
PREAUTH_MAX_FRAME = 4096


@dataclass(frozen=True)
class Message:
    """One decoded frame: a JSON header (with ``op``) plus binary payloads."""

    header: dict[str, Any]
    blobs: tuple[bytes, ...] = field(default=())

    @property
    def op(self) -> str:
        return str(self.header.get("op", ""))


@dataclass(frozen=True)
class Limits:
    """Size caps for one direction of one connection."""

    max_frame: int = MAX_FRAME
    max_json: int = MAX_JSON


DEFAULT_LIMITS = Limits()
PREAUTH_LIMITS = Limits(max_frame=PREAUTH_MAX_FRAME, max_json=PREAUTH_MAX_FRAME)


def encode(header: dict[str, Any], blobs: Sequence[bytes] = (), limits: Limits = Limits()) -> list[bytes]:
    """Frame a message; returns chunks for ``writelines`` so blobs are not copied."""
    if not isinstance(header.get("op"), str):
        raise ProtocolError("message header needs a string 'op'")
    if blobs:
        header = {**header, "_blobs": [len(b) for b in blobs]}
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    blob_len = sum(len(b) for b in blobs)
    if len(raw) > limits.max_json or len(raw) + blob_len > limits.max_frame:
        raise FrameTooLarge(
            f"message {header['op']!r} is {len(raw) + blob_len} bytes, cap is {limits.max_frame}"
        )
    return [PREFIX.pack(MAGIC, FRAME_FORMAT, len(raw), blob_len), raw, *blobs]


def encode_bytes(header: dict[str, Any], blobs: Sequence[bytes] = (), limits: Limits = Limits()) -> bytes:
    return b"".join(encode(header, blobs, limits))


def parse_prefix(prefix: bytes, limits: Limits = Limits()) -> tuple[int, int]:
    """Validate a frame prefix; returns (json_len, blob_len) or raises before any body is read."""
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError(f"frame prefix is {len(prefix)} bytes, want {PREFIX_SIZE}")
    magic, fmt, json_len, blob_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r} (not a kernelfarm peer?)")
    if fmt != FRAME_FORMAT:
        raise ProtocolError(f"unsupported frame format {fmt}, this side speaks {FRAME_FORMAT}")
    if json_len == 0 or json_len > limits.max_json:
        raise FrameTooLarge(f"frame header announces {json_len} JSON bytes, cap is {limits.max_json}")
    if json_len + blob_len > limits.max_frame:
        raise FrameTooLarge(f"frame announces {json_len + blob_len} bytes, cap is {limits.max_frame}")
    return json_len, blob_len


def _no_constant(name: str) -> Any:
    # Our encoder never writes NaN/Infinity (allow_nan=False); a peer that does would
    # smuggle values that break ordering and deadlines (NaN <= x is always False).
    raise ValueError(f"non-finite number {name} is not allowed")


def decode_body(json_len: int, blob_len: int, body: bytes) -> Message:
    """Decode the body that followed a prefix accepted by ``parse_prefix``."""
    if len(body) != json_len + blob_len:
        raise ProtocolError(f"frame body is {len(body)} bytes, prefix said {json_len + blob_len}")
    try:
        header = json.loads(body[:json_len], parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    except RecursionError:  # "[[[[..." within the size cap: must cost the peer, not the process
        raise ProtocolError("frame header nests too deeply") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("frame header must be a JSON object with a string 'op'")
    sizes = header.pop("_blobs", [])
    if (
        not isinstance(sizes, list)
        or not all(isinstance(n, int) and n >= 0 for n in sizes)
        or sum(sizes) != blob_len
    ):
        raise ProtocolError(f"blob sizes {sizes!r:.100} do not add up to {blob_len}")
    blobs = []
    pos = json_len
    for n in sizes:
        blobs.append(body[pos : pos + n])
        pos += n
    return Message(header, tuple(blobs))


def decode_frames(data: bytes, limits: Limits = Limits()) -> tuple[list[Message], bytes]:
    """Decode every whole frame in ``data``; returns (messages, leftover bytes).

    Used by pipes and tests; stream transports read prefix and body separately.
    """
    out = []
    pos = 0
    while len(data) - pos >= PREFIX_SIZE:
        json_len, blob_len = parse_prefix(data[pos : pos + PREFIX_SIZE], limits)
        end = pos + PREFIX_SIZE + json_len + blob_len
        if len(data) < end:
            break
        out.append(decode_body(json_len, blob_len, data[pos + PREFIX_SIZE : end]))
        pos = end
    return out, data[pos:]
