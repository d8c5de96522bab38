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
from collections.abc import Mapping
from typing import Any

from rpc.codec import PROTOCOL_VERSIONS
from rpc.errors import AuthError, ProtocolError, RpcError, VersionMismatch, from_wire, to_wire
from rpc.transport import Connection

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


def _valid_nonce(n: Any) -> bool:
    return isinstance(n, str) and len(n) == 2 * NONCE_BYTES and all(c in "0123456789abcdef" for c in n)


async def accept(
    conn: Connection, token: bytes, versions: tuple[int, ...] = PROTOCOL_VERSIONS, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[str, int]:
    """Acceptor side. Returns (role, version); raises AuthError/VersionMismatch/ProtocolError.

    The caller keeps pre-auth frame limits until this returns, so an
    unauthenticated peer can never make us read a large body.
    """
    server_nonce = make_nonce()
    await conn.send({"op": "hello", "versions": list(versions), "nonce": server_nonce})
    msg = await conn.recv(idle_timeout=timeout)
    h = msg.header
    if msg.op != "auth":
        raise ProtocolError(f"expected 'auth' first, got {msg.op!r:.40}")
    version, role, client_nonce = h.get("version"), h.get("role"), h.get("nonce")
    if not isinstance(role, str) or not _valid_nonce(client_nonce) or not isinstance(version, int):
        raise ProtocolError("malformed auth message")
    if version not in versions:
        err = VersionMismatch(f"peer chose protocol version {version}, this side speaks {list(versions)}")
        await conn.send({"op": "error", "error": to_wire(err)})
        raise err
    want = proof(token, "kf-dialer", version, role, server_nonce, client_nonce)
    if not check_proof(want, h.get("proof")):
        # Same answer for wrong and missing tokens: nothing to learn from it.
        await conn.send({"op": "error", "error": to_wire(AuthError("authentication failed"))})
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
    """Dialer side. Returns the agreed version; raises AuthError/VersionMismatch/ProtocolError."""
    msg = await conn.recv(idle_timeout=timeout)
    if msg.op != "hello" or not _valid_nonce(msg.header.get("nonce")):
        raise ProtocolError(f"expected 'hello' from {conn.peer}, got {msg.op!r:.40}")
    theirs = msg.header.get("versions")
    common = set(versions) & set(theirs if isinstance(theirs, list) else [])
    if not common:
        raise VersionMismatch(f"{conn.peer} speaks protocol versions {theirs!r:.60}, this side {list(versions)}")
    version = max(common)
    server_nonce = str(msg.header["nonce"])
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
    if reply.op == "error":
        raise from_wire(reply.header.get("error"))
    want = proof(token, "kf-acceptor", version, role, server_nonce, client_nonce)
    if reply.op != "welcome" or not check_proof(want, reply.header.get("proof")):
        raise AuthError(f"{conn.peer} could not prove it holds the token")
    return version


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
