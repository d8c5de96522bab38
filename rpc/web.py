"""`farm tracker --http`: the live page and its JSON API, served from the tracker's own event loop.

Routes (every answer carries the security headers below):

* ``GET /`` — the page (``rpc/static/index.html``) to a logged-in browser, the login form to
  anyone else; ``GET /login`` the form; ``POST /login`` (``token=...``) sets the session
  cookie and redirects to ``/``, or answers 401 with the form again; ``POST /logout``.
* ``GET /api/summary`` (what ``farm query --json`` prints), ``/api/devices``,
  ``/api/campaigns``, ``/api/campaigns/NAME/curve`` — JSON, only with a session cookie or
  ``Authorization: Bearer TOKEN`` (``rpc.webauth``); otherwise 401 and no data.
* ``GET /static/app.js``, ``app.css`` — the page's script and style, which hold no data.

Why the standard library's asyncio server rather than aiohttp: ``rpc/`` runs on boards and
bare hosts with nothing but Python (the wall in tests/test_architecture.py), and what is
served here is a handful of GETs and one form POST. A minimal HTTP/1.1 handler — request
line, headers, a ``Content-Length`` body, keep-alive — is short and bounded exactly: 16 KiB
of head, 4 KiB of body, ``REQUEST_TIMEOUT_S`` to send a request, ``MAX_CONNECTIONS``.
Chunked request bodies are refused (no client of ours sends one).

The page loads nothing from outside the farm: the Content-Security-Policy is
``default-src 'self'`` with no inline script or style, and the script fills the page with
text nodes only.

The server runs on a thread and event loop of its own, so a busy tracker loop never delays
an answer and an HTTP client never delays a dispatch; the JSON documents are rendered on the
tracker's loop and handed over as bytes (``rpc.webdocs``).
"""
from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rpc.ratelog import PerPeerLog
from rpc.webauth import GuessThrottle, WebAuth
from rpc.webdocs import Documents, FarmSource

log = logging.getLogger(__name__)

MAX_HEAD = 16 << 10
MAX_BODY = 4 << 10
REQUEST_TIMEOUT_S = 15.0  # a keep-alive connection idle this long is closed too
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
MAX_REQUESTS_PER_CONNECTION = 10_000
STATIC_DIR = Path(__file__).with_name("static")
STATIC = {"/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8")}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_exposure(host: str, *, tls: bool, insecure: bool) -> None:
    """The page shows the fleet and takes the token: off loopback it needs TLS, or an explicit
    ``--http-insecure`` (e.g. behind a TLS-terminating proxy on the same host)."""
    if not is_loopback(host) and not tls and not insecure:
        raise ValueError(f"--http on {host}, which is not a loopback address, needs TLS (--http-cert and "
                         "--http-key) or an explicit --http-insecure; or reach a loopback page through an SSH "
                         "tunnel (README)")


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (then 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http wants HOST:PORT or PORT, got {text!r}")
    return host, int(port)


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return "close" not in conn if self.version == "HTTP/1.1" else "keep-alive" in conn


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebServer:
    """The page and the API of one tracker: ``await start(host, port)`` and ``await stop()`` on the
    tracker's loop; the HTTP server itself runs on a thread of its own (the module doc says why)."""

    def __init__(self, source: FarmSource, token: bytes, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.docs = Documents(source)
        self.auth = WebAuth(token, secure=ssl_context is not None)
        self.throttle = GuessThrottle()
        self.ssl_context = ssl_context
        self._static = {path: (STATIC_DIR / name).read_bytes() for path, (name, _) in STATIC.items()}
        self._index = (STATIC_DIR / "index.html").read_bytes()
        self._login = (STATIC_DIR / "login.html").read_text()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._refusals = PerPeerLog(log)
        self.requests = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self.docs.start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-web", daemon=True)
        self._thread.start()
        try:
            host, port = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._listen(host, port),
                                                                                    self._loop))
        except BaseException:
            await self.stop()
            raise
        log.info("tracker page on %s://%s:%d/", "https" if self.ssl_context else "http", host, port)
        return host, port

    async def _listen(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=MAX_HEAD,
                                                  ssl=self.ssl_context,
                                                  ssl_handshake_timeout=10.0 if self.ssl_context else None)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def stop(self) -> None:
        self.docs.stop()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), loop)), 5.0)
        except (TimeoutError, RuntimeError) as e:
            log.info("page server did not close cleanly: %r", e)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5.0)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    # ---- connections -----------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._writers.add(writer)
        name = writer.get_extra_info("peername")
        peer = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        req = await self._read(reader)
                except HttpError as e:  # malformed: answer, then close
                    self._refusals.warning(peer, "http %s: %s", peer, e)
                    await self._send(writer, Response(e.status, f"{e}\n".encode()), keep_alive=False)
                    return
                if req is None:
                    return
                try:
                    resp = await self.handle(req, peer)
                except Exception:  # a bug answers 500 and is logged; the tracker goes on
                    log.exception("http %s %s", req.method, req.path[:200])
                    resp = Response(500, b"internal error\n")
                if not await self._send(writer, resp, keep_alive=req.keep_alive, head_only=req.method == "HEAD"):
                    return
                if not req.keep_alive:
                    return
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "incomplete request") from None
            return None  # the client closed between requests
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request head over {MAX_HEAD} bytes") from None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "bad request line") from None
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(400, "HTTP/1.0 or HTTP/1.1 only")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise HttpError(400, "bad header line")
            name = name.lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked request bodies are not accepted")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise HttpError(400, "bad Content-Length")
        if int(length) > MAX_BODY:
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
        body = await reader.readexactly(int(length)) if int(length) else b""
        url = urlsplit(target)
        return Request(method, url.path or "/", url.query, version, headers, body)

    async def _send(self, writer: asyncio.StreamWriter, resp: Response, *, keep_alive: bool,
                    head_only: bool = False) -> bool:
        hdrs = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body))),
                ("Cache-Control", resp.cache), ("Connection", "keep-alive" if keep_alive else "close"),
                ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"),
                *resp.headers]
        if self.ssl_context is not None:
            hdrs.append(("Strict-Transport-Security", "max-age=31536000"))
        head = f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n"
        try:
            writer.write(head.encode("latin-1") + (b"" if head_only else resp.body))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return False
        return True

    # ---- routes ----------------------------------------------------------------------------
    async def handle(self, req: Request, peer: str = "") -> Response:
        """One request's answer (on the page's loop: tracker state only through ``self.docs``)."""
        self.requests += 1
        if req.method not in ("GET", "HEAD", "POST"):
            return Response(405, b"GET, HEAD or POST\n", headers=[("Allow", "GET, HEAD, POST")])
        if req.method == "POST":
            if req.path == "/login":
                return self._login_post(req, peer)
            if req.path == "/logout":
                return Response(303, headers=[("Location", "/login"), ("Set-Cookie", self.auth.clear_cookie())])
            return Response(405 if req.path in ("/", "/login") or req.path.startswith("/api/") else 404)
        if req.path in self._static:
            return Response(200, self._static[req.path], STATIC[req.path][1], cache="no-cache")
        bearer = req.headers.get("authorization", "").lower().startswith("bearer ")
        if bearer and (locked := self.throttle.locked(peer)):
            return self._too_many(locked)
        authed = self.auth.authorized(req.headers)
        if bearer and authed:
            self.throttle.right(peer)
        elif bearer:
            self.throttle.wrong(peer)
        if req.path == "/":
            return Response(200, self._index, "text/html; charset=utf-8") if authed else self._login_page()
        if req.path == "/login":
            return Response(303, headers=[("Location", "/")]) if authed else self._login_page()
        if req.path.startswith("/api/"):
            if not authed:
                return Response(401, b'{"error": "unauthorized: log in, or send Authorization: Bearer TOKEN"}\n',
                                "application/json", headers=[("WWW-Authenticate", 'Bearer realm="kernelfarm"')])
            return await self._api(req.path)
        return Response(404, b"not found\n")

    def _login_page(self, status: int = 200, error: str = "") -> Response:
        body = self._login.replace("{{error}}", html.escape(error)).encode()
        return Response(status, body, "text/html; charset=utf-8")

    def _login_post(self, req: Request, peer: str) -> Response:
        if locked := self.throttle.locked(peer):
            return self._too_many(locked)
        form = parse_qs(req.body.decode("utf-8", "replace"), max_num_fields=4)
        given = (form.get("token") or [""])[0]
        if not given or not self.auth.token_ok(given):
            self._refusals.warning(peer, "page login from %s refused: wrong token", peer)
            if given:
                self.throttle.wrong(peer)
            return self._login_page(401, "Wrong token." if given else "Enter the farm's token.")
        self.throttle.right(peer)
        return Response(303, headers=[("Location", "/"), ("Set-Cookie", self.auth.set_cookie())])

    def _too_many(self, seconds: float) -> Response:
        wait = max(1, round(seconds))
        return Response(429, f"too many wrong tokens from this address: try again in {wait} s\n".encode(),
                        headers=[("Retry-After", str(wait))])

    async def _api(self, path: str) -> Response:
        try:
            doc = await self.docs.get(path)
        except TimeoutError:
            return Response(503, b'{"error": "the tracker is too busy to answer; try again"}\n', "application/json")
        return Response(doc.status, doc.body, "application/json")
