"""Who may see the live page: the farm token, as a login cookie or a bearer header.

The page shows the fleet (device names, fingerprints, failures), so it asks for the same
token the RPC does. A person types it once into the login form and gets a cookie; a script
sends ``Authorization: Bearer TOKEN``. The cookie never holds the token: it is
``EXPIRY.HMAC-SHA256(token, "kf-web-session|EXPIRY")``, so it proves the token was known
without revealing it, expires on its own after 12 hours (the browser drops it then too:
``Max-Age``), and stops working the moment the farm's token changes. It is ``HttpOnly``
(no script reads it), ``SameSite=Strict`` (no other site's page sends it) and, under TLS,
``Secure``. Every comparison goes through ``hmac.compare_digest`` over fixed-length
digests, so neither the time nor the length of a wrong guess says anything. Guessing is
slowed too: a peer address that gives ``GUESSES`` wrong tokens within ``GUESS_WINDOW_S``
(login form or bearer header) is answered 429 for ``LOCKOUT_S`` without its token being
looked at, while everyone else goes on.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping

COOKIE = "kf_session"
SESSION_S = 12 * 3600
_LABEL = b"kf-web-session|"
GUESSES = 10
GUESS_WINDOW_S = 60.0
LOCKOUT_S = 60.0
# Addresses remembered at most: a flood from many addresses forgets the oldest, never grows the tracker.
MAX_PEERS = 4096


def _digest(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


class WebAuth:
    """Checks a request's cookie or bearer token against the farm token; makes login cookies."""

    def __init__(self, token: bytes, *, secure: bool, session_s: int = SESSION_S) -> None:
        if not token:
            raise ValueError("the page needs the farm's token")
        self._token = token
        self._token_digest = _digest(token)
        self.secure = secure
        self.session_s = session_s

    def token_ok(self, given: str | bytes) -> bool:
        """Whether ``given`` is the farm token (a login form's field, a bearer header)."""
        raw = given.encode("utf-8", "surrogateescape") if isinstance(given, str) else given
        return hmac.compare_digest(_digest(raw.strip()), self._token_digest)

    def _mac(self, expiry: int) -> str:
        return hmac.new(self._token, _LABEL + str(expiry).encode(), hashlib.sha256).hexdigest()

    def session_value(self, now: float | None = None) -> str:
        expiry = int(now if now is not None else time.time()) + self.session_s
        return f"{expiry}.{self._mac(expiry)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        expiry_s, _, mac = value.partition(".")
        if not expiry_s.isdigit() or len(expiry_s) > 12 or len(mac) != 64:
            return False
        expiry, t = int(expiry_s), now if now is not None else time.time()
        # a cookie that claims to outlive a fresh one was not made here
        fresh = t < expiry <= t + self.session_s + 60
        return hmac.compare_digest(self._mac(expiry), mac) and fresh

    def set_cookie(self, now: float | None = None) -> str:
        """The ``Set-Cookie`` value a successful login answers with."""
        return (f"{COOKIE}={self.session_value(now)}; Max-Age={self.session_s}; Path=/; HttpOnly; SameSite=Strict"
                + ("; Secure" if self.secure else ""))

    def clear_cookie(self) -> str:
        return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if self.secure else "")

    def authorized(self, headers: Mapping[str, str], now: float | None = None) -> bool:
        """A valid bearer token or session cookie (header names lower-case)."""
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return self.token_ok(credentials)
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self.session_ok(value.strip(), now):
                return True
        return False


def peer_address(peer: str) -> str:
    """The address of ``host:port`` (IPv6 too): the port changes with every connection."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class GuessThrottle:
    """Counts wrong tokens per peer address; ``locked(peer)`` says for how many more seconds it is refused."""

    def __init__(self, guesses: int = GUESSES, window_s: float = GUESS_WINDOW_S, lockout_s: float = LOCKOUT_S,
                 max_peers: int = MAX_PEERS) -> None:
        self.guesses, self.window_s, self.lockout_s, self.max_peers = guesses, window_s, lockout_s, max_peers
        self._wrong: OrderedDict[str, list[float]] = OrderedDict()  # address -> times of its recent wrong tokens
        self._until: dict[str, float] = {}

    def locked(self, peer: str, now: float | None = None) -> float:
        addr, t = peer_address(peer), now if now is not None else time.monotonic()
        left = self._until.get(addr, 0.0) - t
        if left <= 0:
            self._until.pop(addr, None)
            return 0.0
        return left

    def wrong(self, peer: str, now: float | None = None) -> None:
        addr, t = peer_address(peer), now if now is not None else time.monotonic()
        recent = [x for x in self._wrong.pop(addr, []) if t - x < self.window_s] + [t]
        if len(recent) >= self.guesses:
            self._until[addr] = t + self.lockout_s
            recent = []
        self._wrong[addr] = recent
        while len(self._wrong) > self.max_peers:
            self._wrong.popitem(last=False)
        if len(self._until) > self.max_peers:
            for a in sorted(self._until, key=self._until.__getitem__)[: len(self._until) - self.max_peers]:
                del self._until[a]

    def right(self, peer: str) -> None:
        self._wrong.pop(peer_address(peer), None)
