"""A TCP proxy on 127.0.0.1 (port 0) that can cut a connection in the middle of an upload.

Put it between a device server and the tracker (``--tracker PROXY``): bytes
flow unchanged both ways until ``cut_next_upload()`` is armed; then the next
chunk from the tracker larger than ``min_upload`` bytes (a job frame carrying
artifact code; heartbeats are tiny) is forwarded only halfway and both sides
are aborted, so the device sees a frame that never completes and the tracker
sees its device vanish with a job assigned.

It runs its own event loop in a daemon thread; ``close()`` stops it and every
connection it holds.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Self

log = logging.getLogger(__name__)


class CuttingProxy:
    """``with CuttingProxy("127.0.0.1:PORT") as p: p.address``; ``p.cut_next_upload()``."""

    def __init__(self, upstream: str, min_upload: int = 1024) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.min_upload = min_upload
        self.address = ""
        self.cuts = 0
        self.connections = 0
        self._armed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> str:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._on_connect, "127.0.0.1", 0), self._loop).result(10)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self.address

    def cut_next_upload(self) -> None:
        self._armed.set()

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        pair = (writer, up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, pair, False),
                                 self._pipe(up_reader, writer, pair, True))
        finally:
            for w in pair:
                w.transport.abort()
                self._writers.discard(w)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], downstream: bool) -> None:
        try:
            while True:
                data = await src.read(1 << 16)
                if not data:
                    break
                if downstream and len(data) >= self.min_upload and self._armed.is_set():
                    self._armed.clear()
                    self.cuts += 1
                    dst.write(data[: len(data) // 2])
                    await dst.drain()
                    log.info("cut a connection after %d of %d bytes of an upload", len(data) // 2, len(data))
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        for w in pair:  # either side ending ends the pair
            w.transport.abort()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await asyncio.sleep(0.05)  # let the pipes see the aborts and finish

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
