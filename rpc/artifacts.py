"""Content-addressed artifact storage for the tracker and device servers.

Artifacts travel as a JSON header plus code bytes (see ``farm.artifact``).
The hash is recomputed here so a peer cannot file different bytes under a
known hash; the formula must match ``farm.artifact.Artifact.hash`` (a test
checks they agree) and is restated because rpc/ cannot import farm.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from rpc.errors import BadRequest


def content_hash(header: dict[str, Any], code: bytes) -> str:
    """sha256 of the header without its hash (sorted keys) followed by the code."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != "hash"}, sort_keys=True).encode())
    h.update(code)
    return h.hexdigest()


def checked_hash(header: Any, code: bytes) -> str:
    """The header's hash after verifying it against the content; BadRequest otherwise."""
    if not isinstance(header, dict) or not isinstance(header.get("hash"), str):
        raise BadRequest("artifact header must be an object with a 'hash'")
    if header.get("code_size") != len(code):
        raise BadRequest(f"artifact code is {len(code)} bytes, header says {header.get('code_size')!r:.20}")
    got = content_hash(header, code)
    if got != header["hash"]:
        raise BadRequest(f"artifact hash {header['hash'][:12]}... does not match its content ({got[:12]}...)")
    return got


class ArtifactStore:
    """Least-recently-used map hash -> code, bounded by total bytes."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, h: str) -> bool:
        return h in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, h: str) -> bytes | None:
        code = self._items.get(h)
        if code is not None:
            self._items.move_to_end(h)
        return code

    def put(self, h: str, code: bytes) -> None:
        if h in self._items:
            self._items.move_to_end(h)
            return
        self._items[h] = code
        self.nbytes += len(code)
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.nbytes -= len(old)

    def hashes(self) -> list[str]:
        return list(self._items)
