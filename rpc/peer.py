"""The tracker's side of one connection, and what it holds to send a device one job."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from rpc.errors import RpcError
from rpc.transport import Connection

log = logging.getLogger("rpc.tracker")


@dataclass(eq=False)
class Peer:
    """One authenticated connection as the tracker holds it: an outbox drained by its own writer
    task, so actions never interleave on a connection and a slow peer blocks nobody else."""

    conn: Connection
    outbox: asyncio.Queue[tuple[dict[str, Any], list[bytes]]] = field(default_factory=asyncio.Queue)
    has: set[str] = field(default_factory=set)  # devices: artifact hashes it holds
    version: int = 1  # the protocol version its handshake agreed

    def post(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> None:
        self.outbox.put_nowait((header, blobs or []))

    async def writer(self) -> None:
        try:
            while True:
                header, blobs = await self.outbox.get()
                await self.conn.send(header, blobs)
        except RpcError as e:  # peer gone, or a message we could not frame
            log.info("writer to %s stopped: %s", self.conn.peer, e)
            self.conn.abort()


@dataclass(frozen=True)
class Payload:
    """What the tracker must send a device to run one job."""

    artifact: dict[str, Any]
    code: bytes
    options: dict[str, Any]
    reference: tuple[dict[str, Any], bytes] | None = None  # the check the artifact names (protocol 2)
