"""Moving frames over asyncio TCP (optionally TLS), with read deadlines.

Two deadlines guard every read:
  * ``idle_timeout`` -- how long to wait for the *first byte* of the next frame
    (None: forever; clients may legitimately wait long for a result);
  * ``frame_timeout`` -- once a frame has started, all of it must arrive in this
    time, so a peer that sends half a frame and stalls is dropped and never
    holds anyone else up (each connection has its own task).
A prefix is validated before the body is read (see ``rpc.codec``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rpc import codec
from rpc.codec import Limits, Message
from rpc.errors import ConnectionLost, ProtocolError

log = logging.getLogger(__name__)

DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 30.0


def parse_address(address: str, default_port: int = 9190) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, or ``"host"``) -> (host, port)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None
    if not host or not 0 <= p < 65536:
        raise ValueError(f"bad address {address!r}: want HOST:PORT")
    return host, p


class Connection:
    """One framed, bidirectional connection. Sends are serialized by a lock."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        limits: Limits = codec.DEFAULT_LIMITS,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self.version = 1  # the protocol version the handshake agreed (rpc.auth)
        self.reader = reader
        self.writer = writer
        self.limits = limits  # what we accept; raised after authentication
        self.frame_timeout = frame_timeout
        self.write_timeout = write_timeout
        self._send_lock = asyncio.Lock()
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def recv(self, idle_timeout: float | None = None) -> Message:
        """Next message; raises ConnectionLost on EOF/deadline, ProtocolError on bad frames."""
        try:
            async with asyncio.timeout(idle_timeout):
                first = await self.reader.readexactly(1)
        except TimeoutError:
            raise ConnectionLost(f"{self.peer}: silent for {idle_timeout:.1f}s") from None
        except (asyncio.IncompleteReadError, OSError) as e:
            raise ConnectionLost(f"{self.peer}: connection closed ({type(e).__name__})") from None
        try:
            async with asyncio.timeout(self.frame_timeout):
                prefix = first + await self.reader.readexactly(codec.PREFIX_SIZE - 1)
                json_len, blob_len = codec.parse_prefix(prefix, self.limits)
                body = await self.reader.readexactly(json_len + blob_len)
        except TimeoutError:
            raise ConnectionLost(f"{self.peer}: frame incomplete after {self.frame_timeout:.1f}s") from None
        except (asyncio.IncompleteReadError, OSError) as e:
            raise ConnectionLost(f"{self.peer}: closed mid-frame ({type(e).__name__})") from None
        return codec.decode_body(json_len, blob_len, body)

    async def send(self, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
        """Send one message; raises ConnectionLost if the peer is gone or not reading."""
        chunks = codec.encode(header, blobs)
        async with self._send_lock:
            if self.closed:
                raise ConnectionLost(f"{self.peer}: connection closed")
            try:
                self.writer.writelines(chunks)
                async with asyncio.timeout(self.write_timeout):
                    await self.writer.drain()
            except TimeoutError:
                self.abort()
                raise ConnectionLost(f"{self.peer}: peer not reading for {self.write_timeout:.1f}s") from None
            except (OSError, RuntimeError) as e:
                self.abort()
                raise ConnectionLost(f"{self.peer}: send failed ({type(e).__name__})") from None

    async def request(
        self, header: dict[str, Any], blobs: Sequence[bytes] = (), timeout: float | None = None
    ) -> Message:
        """Send, then read the next message (only for strictly alternating phases like the handshake)."""
        await self.send(header, blobs)
        return await self.recv(idle_timeout=timeout)

    def abort(self) -> None:
        """Drop the connection now, without a goodbye (used after protocol errors)."""
        if not self.closed:
            self.closed = True
            transport = self.writer.transport
            if transport is not None:
                transport.abort()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass


async def open_connection(
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits = codec.PREAUTH_LIMITS,
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
) -> Connection:
    """Dial once with a deadline; raises ConnectionLost on refusal/timeout."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None, limit=1 << 16
            )
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise ConnectionLost(f"cannot connect to {host}:{port}: {e or type(e).__name__}") from None
    return Connection(reader, writer, limits=limits, frame_timeout=frame_timeout)


def backoff_delays(base: float = 0.1, cap: float = 10.0) -> Any:
    """Endless jittered exponential delays (full jitter on the upper half), so a
    fleet of device servers does not reconnect in lockstep after a tracker restart."""
    delay = base
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(cap, delay * 2)


Handler = Callable[[Connection], Awaitable[None]]


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
) -> asyncio.Server:
    """Listen; each connection gets its own task running ``handler``.

    The handler starts with pre-auth limits. Any exception it lets escape is
    logged and the connection aborted: nothing one peer sends can stop the
    accept loop.
    """

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, limits=codec.PREAUTH_LIMITS, frame_timeout=frame_timeout)
        try:
            await handler(conn)
        except (ConnectionLost, ProtocolError) as e:
            log.info("dropped %s: %s", conn.peer, e)
        except Exception:  # a bug in a handler must cost one connection, not the server
            log.exception("handler failed for %s", conn.peer)
        finally:
            conn.abort()

    return await asyncio.start_server(on_connect, host, port, ssl=ssl_context, limit=1 << 16)


def make_ssl_contexts(
    cert: str | None, key: str | None, ca: str | None
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server_ctx, client_ctx) from PEM paths; (None, None) when TLS is not configured.

    Clients verify the server against ``ca`` (or the system store). Identity of
    the peer is still proven by the shared token on top of TLS.
    """
    server_ctx = client_ctx = None
    if cert and key:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
    if ca:
        client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    return server_ctx, client_ctx
