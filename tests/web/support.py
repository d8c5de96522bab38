"""A tracker with its page on a loop thread of this process, and a small HTTP client, for tests/web."""
from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from rpc.tracker import Tracker

T = TypeVar("T")


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class LoopTracker:
    """``Tracker`` + ``start_http`` on 127.0.0.1 (RPC on ``port``, the page on port 0), on its own loop thread."""

    def __init__(self, token: bytes | None = None, port: int = 0, **kw: Any) -> None:
        self.token = token or secrets.token_hex(16).encode()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="web-test-tracker", daemon=True)
        self.thread.start()
        self.tracker = Tracker(self.token, **kw)
        host, bound = self.run(self.tracker.start("127.0.0.1", port))
        self.address = f"{host}:{bound}"
        _, self.http_port = self.run(self.tracker.start_http("127.0.0.1", 0))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a plain function on the tracker's loop (the tracker is not thread-safe)."""

        async def go() -> Any:
            return fn(*args)

        return self.run(go())

    def close(self) -> None:
        try:
            self.run(self.tracker.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read())
        finally:
            conn.close()

    def bearer(self, token: bytes | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {(token or self.token).decode()}"}

    def api(self, path: str) -> Any:
        r = self.request("GET", path, headers=self.bearer())
        assert r.status == 200, (path, r.status, r.body[:200])
        return r.json()


@contextmanager
def loop_tracker(**kw: Any) -> Iterator[LoopTracker]:
    t = LoopTracker(**kw)
    try:
        yield t
    finally:
        t.close()
