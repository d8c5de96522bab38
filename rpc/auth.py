"""Shared-token challenge-response, both directions, before any other message.

    acceptor  -> dialer   {"op": "hello", "versions": [...], "nonce": Ns}
    dialer    -> acceptor {"op": "auth", "version": v, "role": r, "nonce": Nc,
                           "proof": HMAC(token, "kf-dialer|v|r|Ns|Nc")}
    acceptor  -> dialer   {"op": "welcome", "version": v,
                           "proof": HMAC(token, "kf-acceptor|v|r|Ns|Nc")}

The token never crosses the wire. A fresh random nonce from each side means a
recorded proof is useless on another connection (replay fails), and the
distinct labels stop one side's proof being reflected back as the other's.
Proofs are compared with ``hmac.compare_digest``. The acceptor decides the
version (the highest both list); the dialer verifies the acceptor's proof,
so a dialer never talks to an impostor tracker either.

The token itself is read only at the edges (CLI, ``farm.connect``), through ``load_token``.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import ssl
from collections.abc import Mapping
from typing import Any

from rpc import fields
from rpc.codec import PROTOCOL_VERSIONS, Limits
from rpc.errors import (
    AuthError,
    BadRequest,
    ConnectionLost,
    ProtocolError,
    RpcError,
    VersionMismatch,
    from_wire,
    to_wire,
)
from rpc.transport import Connection, open_connection

log = logging.getLogger(__name__)

NONCE_BYTES = 32
HANDSHAKE_TIMEOUT = 10.0


def make_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof(token: bytes, label: str, version: int, role: str, server_nonce: str, client_nonce: str) -> str:
    msg = "|".join((label, str(version), role, server_nonce, client_nonce)).encode()
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def check_proof(expected: str, got: Any) -> bool:
    """Constant-time comparison; a non-string proof is simply wrong."""
    if not isinstance(got, str):
        return False
    return hmac.compare_digest(expected.encode(), got.encode())


def _checked(msg: Any, op: str) -> dict[str, Any]:
    """The fields of a handshake message of op ``op`` (rpc.fields); anything else is refused."""
    if msg.op != op and not (op == "welcome" and msg.op == "error"):
        raise ProtocolError(f"expected {op!r}, got {msg.op!r:.40}")
    return fields.validate(fields.HANDSHAKE, msg.op, msg.header)


async def _refuse(conn: Connection, err: RpcError) -> None:
    """Answer a refused handshake (best effort), so the peer can say why in one line."""
    try:
        await conn.send({"op": "error", "error": to_wire(err)})
    except RpcError:
        pass


async def accept(
    conn: Connection, token: bytes, versions: tuple[int, ...] = PROTOCOL_VERSIONS, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[str, int]:
    """Acceptor side. Returns (role, version); raises AuthError/VersionMismatch/ProtocolError/BadRequest.

    The caller keeps pre-auth frame limits until this returns, so an
    unauthenticated peer can never make us read a large body.
    """
    server_nonce = make_nonce()
    await conn.send({"op": "hello", "versions": list(versions), "nonce": server_nonce})
    msg = await conn.recv(idle_timeout=timeout)
    if msg.op != "auth":
        raise ProtocolError(f"expected 'auth' first, got {msg.op!r:.40}")
    try:
        h = _checked(msg, "auth")
    except BadRequest as e:
        await _refuse(conn, e)
        raise
    version, role, client_nonce = h["version"], h["role"], h["nonce"]
    if version not in versions:
        err = VersionMismatch(f"peer chose protocol version {version}, this side speaks {list(versions)}")
        await _refuse(conn, err)
        raise err
    want = proof(token, "kf-dialer", version, role, server_nonce, client_nonce)
    if not check_proof(want, h.get("proof")):
        # Same answer for wrong and missing tokens: nothing to learn from it.
        await _refuse(conn, AuthError("authentication failed"))
        raise AuthError(f"{conn.peer}: bad token proof (role {role!r:.20})")
    await conn.send(
        {
            "op": "welcome",
            "version": version,
            "proof": proof(token, "kf-acceptor", version, role, server_nonce, client_nonce),
        }
    )
    return role, version


async def dial(
    conn: Connection,
    token: bytes,
    role: str,
    versions: tuple[int, ...] = PROTOCOL_VERSIONS,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> int:
    """Dialer side. Returns the agreed version; raises AuthError/VersionMismatch/ProtocolError/BadRequest.

    ``timeout`` bounds each read; ``dial_address`` puts the whole exchange under one budget."""
    msg = await conn.recv(idle_timeout=timeout)
    if msg.op != "hello":
        raise ProtocolError(f"expected 'hello' from {conn.peer}, got {msg.op!r:.40}")
    try:
        hello = _checked(msg, "hello")
    except BadRequest as e:
        await _refuse(conn, e)
        raise
    common = set(versions) & set(hello["versions"])
    if not common:
        theirs = hello["versions"]
        raise VersionMismatch(f"{conn.peer} speaks protocol versions {theirs!r:.60}, this side {list(versions)}")
    version = max(common)
    server_nonce = hello["nonce"]
    client_nonce = make_nonce()
    reply = await conn.request(
        {
            "op": "auth",
            "version": version,
            "role": role,
            "nonce": client_nonce,
            "proof": proof(token, "kf-dialer", version, role, server_nonce, client_nonce),
        },
        timeout=timeout,
    )
    answer = _checked(reply, "welcome")
    if reply.op == "error":
        raise from_wire(answer["error"])
    want = proof(token, "kf-acceptor", version, role, server_nonce, client_nonce)
    if not check_proof(want, answer["proof"]):
        raise AuthError(f"{conn.peer} could not prove it holds the token")
    return version


async def dial_address(
    host: str, port: int, token: bytes, role: str, *, ssl_context: ssl.SSLContext | None = None,
    timeout: float = HANDSHAKE_TIMEOUT, versions: tuple[int, ...] = PROTOCOL_VERSIONS,
) -> Connection:
    """Connect and authenticate under ONE budget of ``timeout`` seconds, TCP connect included.

    Per-read deadlines alone let a peer that sends half a hello and stalls hold the dialer for a
    frame deadline (30 s) on top of the handshake's; PROTOCOL.md promises 10 s in all.
    Returns the connection with post-auth limits; raises ConnectionLost when the budget runs out."""
    conn: Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await open_connection(host, port, timeout=timeout, ssl_context=ssl_context)
            conn.version = await dial(conn, token, role, versions=versions, timeout=timeout)
    except TimeoutError:
        if conn is not None:
            conn.abort()
        raise ConnectionLost(f"{host}:{port}: no handshake within {timeout:.1f}s") from None
    except BaseException:
        if conn is not None:
            conn.abort()
        raise
    conn.limits = Limits()  # authenticated: artifacts may now flow
    return conn


async def accept_with_deadline(conn: Connection, token: bytes, timeout: float = HANDSHAKE_TIMEOUT) -> tuple[str, int]:
    """``accept`` under one overall deadline (a slow-drip peer cannot hold a slot)."""
    try:
        async with asyncio.timeout(timeout):
            return await accept(conn, token, timeout=timeout)
    except TimeoutError:
        raise AuthError(f"{conn.peer}: handshake not finished in {timeout:.1f}s") from None


class TokenError(RpcError):
    """No usable token was configured."""


def load_token(token_file: str | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The shared token: ``token_file`` if given, else ``FARM_TOKEN``. Never printed."""
    if token_file:
        try:
            with open(token_file, "rb") as fh:
                token = fh.read().strip()
        except OSError as e:
            raise TokenError(f"cannot read token file {token_file}: {e.strerror}") from None
        if not token:
            raise TokenError(f"token file {token_file} is empty")
        return token
    token_s = (environ if environ is not None else os.environ).get("FARM_TOKEN", "").strip()
    if not token_s:
        raise TokenError("no token: set FARM_TOKEN or pass --token-file")
    return token_s.encode()
