"""The API's documents: rendered on the tracker's loop, handed out by the page's own thread.

The tracker's event loop is the farm's dispatcher; under load it has a queue of ready work, and
an HTTP request served on it would wait its turn behind every result and heartbeat (the load
run measured 130 ms p99 that way). So the page (``rpc.web``) runs its HTTP server on a thread
and loop of its own and never reads the tracker's state from there. Instead the tracker's loop
renders every document someone asked for in the last ``WANTED_S`` (3) seconds, each ``publish_s``
(0.25 s), into bytes; the page's thread hands those bytes out as they are. A document nobody
asked for lately (or one that went stale: a tracker loop too busy to publish) costs its first
request one render on the tracker's loop. Many pollers therefore cost the tracker what one does:
a few renders a second while anyone watches, none when nobody does.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from rpc.view import FarmView

PUBLISH_S = 0.25
WANTED_S = 3.0  # a page polls every second: three missed polls and it is gone
MAX_DOCS = 256  # paths kept published (curves of campaigns count one each)
RENDER_TIMEOUT_S = 10.0


class FarmSource(Protocol):
    """What the page reads: the tracker (``rpc.tracker.Tracker``)."""

    view: FarmView

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Doc:
    at: float  # time.monotonic() of its render
    status: int  # 200, or 404 for a path that names nothing
    body: bytes


NOT_FOUND = b'{"error": "not found"}\n'


class Documents:
    """``start()`` on the tracker's loop; ``await get(path)`` from the page's loop."""

    def __init__(self, source: FarmSource, publish_s: float = PUBLISH_S) -> None:
        self.source = source
        self.publish_s = publish_s
        self.renders = 0
        self._docs: dict[str, Doc] = {}  # written on the tracker's loop, read on the page's
        self._wanted: dict[str, float] = {}  # path -> last asked (written on the page's loop)
        self._farm_loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._farm_loop = asyncio.get_running_loop()
        self._task = self._farm_loop.create_task(self._publish())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def get(self, path: str) -> Doc:
        """The document at ``path`` (an /api/ path), at most ~2 publish periods old."""
        now = time.monotonic()
        if path in self._wanted or len(self._wanted) < MAX_DOCS:
            self._wanted[path] = now
        doc = self._docs.get(path)
        if doc is not None and now - doc.at <= 2 * self.publish_s:
            return doc
        assert self._farm_loop is not None, "Documents.start() was not called"
        fut = asyncio.run_coroutine_threadsafe(self._render_now(path), self._farm_loop)
        return await asyncio.wait_for(asyncio.wrap_future(fut), RENDER_TIMEOUT_S)

    async def _render_now(self, path: str) -> Doc:
        return self._render([path])[path]

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(self.publish_s)
            now = time.monotonic()
            for path, asked in list(self._wanted.items()):
                if now - asked > WANTED_S:  # nobody watches it any more
                    self._wanted.pop(path, None)
                    self._docs.pop(path, None)
            if self._wanted:
                self._render(list(self._wanted))

    def _render(self, paths: list[str]) -> dict[str, Doc]:
        """Render ``paths`` now (on the tracker's loop: the only place its state is read)."""
        now = time.monotonic()
        summary: dict[str, Any] | None = None
        out = {}
        for path in paths:
            data: dict[str, Any] | None
            if path in ("/api/summary", "/api/devices"):
                summary = summary or self.source.summary()
                data = summary if path == "/api/summary" else self.source.view.devices_json(summary, now)
            else:
                data = self._data(path, now)
            body = NOT_FOUND if data is None else json.dumps(data, separators=(",", ":"), default=str).encode()
            out[path] = self._docs[path] = Doc(now, 404 if data is None else 200, body)
            self.renders += 1
        return out

    def _data(self, path: str, now: float) -> dict[str, Any] | None:
        view = self.source.view
        if path == "/api/campaigns":
            return view.campaigns_json(now)
        prefix, suffix = "/api/campaigns/", "/curve"
        if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
            return view.curve_json(unquote(path[len(prefix):-len(suffix)]))
        return None
