"""Who sees the page (rpc.web, rpc.webauth): the token, as an HMAC cookie or a bearer header.

Wrong or missing token: the login page and no data, 401 from the API. The cookie is an HMAC
of the token (never the token), HttpOnly, SameSite=Strict, 12 h, Secure under TLS. Every
answer carries the CSP ``default-src 'self'``; the page's HTML has no inline script or style
and loads nothing from outside the farm. ``--http`` off loopback needs TLS or --http-insecure.
"""
from __future__ import annotations

import html.parser
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpc.web import STATIC_DIR, check_exposure, is_loopback, parse_http_address
from rpc.webauth import COOKIE, GUESSES, SESSION_S, GuessThrottle, WebAuth
from tests.rpc.harness import ROOT, LocalFarm
from tests.web.support import LoopTracker, loop_tracker

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
API = ("/api/summary", "/api/devices", "/api/campaigns", "/api/campaigns/x/curve")


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopTracker]:
    with loop_tracker() as t:
        yield t


def _cookie(set_cookie: str) -> str:
    return set_cookie.split(";")[0]


def test_the_cookie_is_an_hmac_of_the_token_with_strict_flags() -> None:
    token = b"s3cret-farm-token"
    auth = WebAuth(token, secure=False)
    header = auth.set_cookie(now=1_000_000)
    name, _, value = _cookie(header).partition("=")
    flags = [f.strip() for f in header.split(";")[1:]]
    assert name == COOKIE and "HttpOnly" in flags and "SameSite=Strict" in flags and "Path=/" in flags
    assert f"Max-Age={SESSION_S}" in flags and SESSION_S == 12 * 3600 and "Secure" not in flags
    assert token.decode() not in header and re.fullmatch(r"\d+\.[0-9a-f]{64}", value)
    assert auth.session_ok(value, now=1_000_000 + SESSION_S - 1)
    assert not auth.session_ok(value, now=1_000_000 + SESSION_S + 1)  # expired after 12 h
    assert not WebAuth(b"another-token", secure=False).session_ok(value, now=1_000_000)
    expiry, mac = value.split(".")
    assert not auth.session_ok(f"{int(expiry) + 3600}.{mac}", now=1_000_000)  # extended by hand
    assert not auth.session_ok(f"{expiry}.{mac[:-1]}0" if mac[-1] != "0" else f"{expiry}.{mac[:-1]}1",
                               now=1_000_000)
    for junk in ("", ".", "x.y", f"{expiry}.", "1" * 40 + "." + mac):
        assert not auth.session_ok(junk, now=1_000_000)
    assert "Secure" in WebAuth(token, secure=True).set_cookie().split("; ")
    assert auth.authorized({"authorization": f"Bearer {token.decode()}"})
    assert not auth.authorized({"authorization": "Bearer wrong"}) and not auth.authorized({})
    assert auth.authorized({"cookie": f"theme=dark; {COOKIE}={auth.session_value()}"})


def test_off_loopback_the_page_needs_tls_or_an_explicit_insecure() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        check_exposure(host, tls=False, insecure=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "farm.example"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="needs TLS"):
            check_exposure(host, tls=False, insecure=False)
        check_exposure(host, tls=True, insecure=False)
        check_exposure(host, tls=False, insecure=True)
    assert parse_http_address("8080") == ("127.0.0.1", 8080)
    assert parse_http_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_http_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_http_address("host:http")


def test_the_cli_refuses_a_page_off_loopback_without_tls(tmp_path: Path) -> None:
    env = dict(os.environ, FARM_TOKEN="t0ken", PYTHONPATH=str(ROOT))
    for extra in (["--http", "0.0.0.0:0"], ["--http", "0.0.0.0:0", "--http-cert", "c.pem"]):
        r = subprocess.run([sys.executable, "-m", "rpc.cli", "tracker", "--port", "0", *extra], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("farm tracker: error: "), r.stderr
        assert "listening" not in r.stdout


def test_without_the_token_only_the_login_page(lt: LoopTracker) -> None:
    page = lt.request("GET", "/")
    assert page.status == 200 and 'id="login-form"' in page.text and 'id="devices"' not in page.text
    for path in API:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE}=1.{'0' * 64}"},
                        {"Authorization": f"Basic {lt.token.decode()}"}):
            r = lt.request("GET", path, headers=headers)
            assert r.status == 401 and b"devices" not in r.body and b"campaign" not in r.body.lower(), (path, headers)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = lt.request("POST", "/login", body=b"token=wrong", headers=FORM)
    assert wrong.status == 401 and "Wrong token" in wrong.text and "Set-Cookie" not in wrong.headers
    assert 'id="login-form"' in wrong.text
    empty = lt.request("POST", "/login", body=b"")
    assert empty.status == 401 and "Set-Cookie" not in empty.headers


def test_login_sets_a_cookie_that_opens_the_page_and_the_api(lt: LoopTracker) -> None:
    r = lt.request("POST", "/login", body=b"token=" + lt.token, headers=FORM)
    assert r.status == 303 and r.headers["Location"] == "/"
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and f"Max-Age={SESSION_S}" in set_cookie
    assert lt.token.decode() not in set_cookie and "Secure" not in set_cookie  # plain HTTP on loopback
    cookie = {"Cookie": _cookie(set_cookie)}
    page = lt.request("GET", "/", headers=cookie)
    assert page.status == 200 and 'id="devices"' in page.text and 'id="login-form"' not in page.text
    assert lt.request("GET", "/login", headers=cookie).status == 303
    s = lt.request("GET", "/api/summary", headers=cookie)
    assert s.status == 200 and set(s.json()) >= {"keys", "devices", "lost", "campaigns", "failures"}
    out = lt.request("POST", "/logout", headers=cookie)
    assert out.status == 303 and "Max-Age=0" in out.headers["Set-Cookie"]
    assert lt.request("GET", "/api/summary", headers=lt.bearer()).status == 200  # scripts: the bearer header


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "style" or "style" in a or any(k.startswith("on") for k in a):
            self.problems.append(f"inline style or handler: <{tag} {attrs}>")
        if tag == "script":
            self._in_script = True
            if not (a.get("src") or "").startswith("/static/"):
                self.problems.append(f"script not from /static/: {attrs}")
        for k in ("src", "href", "action"):
            v = a.get(k)
            if v is not None and not v.startswith("/"):
                self.problems.append(f"{tag} {k}={v!r} leaves the farm")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script")


def test_every_answer_has_the_security_headers_and_the_page_nothing_inline(lt: LoopTracker) -> None:
    for path, headers in [("/", {}), ("/", lt.bearer()), ("/login", {}), ("/static/app.js", {}),
                          ("/static/app.css", {}), ("/api/summary", {}), ("/api/summary", lt.bearer()),
                          ("/nowhere", {})]:
        r = lt.request("GET", path, headers=headers)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY", path
        assert "Strict-Transport-Security" not in r.headers  # only under TLS
    for name in ("index.html", "login.html"):
        tags = _Tags()
        tags.feed((STATIC_DIR / name).read_text())
        assert not tags.problems, (name, tags.problems)
    script = (STATIC_DIR / "app.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script
    assert set(re.findall(r"https?://[^\s\"']+", script)) <= {"http://www.w3.org/2000/svg"}  # a namespace, not a load
    assert not re.search(r"url\(|@import|https?://", (STATIC_DIR / "app.css").read_text())


def _raw(lt: LoopTracker, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", lt.http_port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_malformed_requests_are_answered_and_the_page_goes_on(lt: LoopTracker) -> None:
    assert _raw(lt, b"GET / HTTP/1.1\r\nX: " + b"a" * (20 << 10) + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert _raw(lt, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(lt, b"GET / HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(lt, b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert _raw(lt, b"POST /login HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").startswith(b"HTTP/1.1 413")
    assert _raw(lt, b"DELETE /api/summary HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 405")
    # keep-alive: two requests on one connection
    two = _raw(lt, b"GET /static/app.css HTTP/1.1\r\n\r\nGET /api/summary HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 200") and two.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 401" in two
    assert lt.request("GET", "/api/summary", headers=lt.bearer()).status == 200


def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(cert)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {r.stderr[-200:]!r}")
    return str(cert), str(key)


def test_under_tls_the_cookie_is_secure_and_hsts_is_sent(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start_tracker(0, "--http", "127.0.0.1:0", "--http-cert", cert, "--http-key", key)
        assert farm.tracker is not None and farm.tracker.popen.stdout is not None
        line = farm.tracker.popen.stdout.readline().decode()
        m = re.search(r"tracker page on (https://127\.0\.0\.1:\d+/)", line)
        assert m, line
        ctx = ssl.create_default_context(cafile=cert)
        req = urllib.request.Request(m.group(1) + "login", data=b"token=" + farm.token.encode(), method="POST")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: object, **k: object) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as e:  # the 303 is not followed
            opener.open(req, timeout=10)
        assert e.value.code == 303
        flags = e.value.headers["Set-Cookie"].split("; ")
        assert "Secure" in flags and "HttpOnly" in flags and "SameSite=Strict" in flags
        assert e.value.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        assert not farm.close()


def test_guessing_the_token_is_throttled_per_address() -> None:
    """Ten wrong tokens within a minute from one address: 429 with Retry-After for a minute, even for the
    right token; other addresses, and that one afterwards, go on."""
    th = GuessThrottle(guesses=3, window_s=60.0, lockout_s=30.0)
    for t in (0.0, 1.0):
        th.wrong("10.0.0.1:5000", now=t)
    assert th.locked("10.0.0.1:6000", now=2.0) == 0.0
    th.wrong("10.0.0.1:7000", now=2.0)  # the port changes per connection: the address counts
    assert th.locked("10.0.0.1:1", now=3.0) == pytest.approx(29.0)
    assert th.locked("10.0.0.2:1", now=3.0) == 0.0 and th.locked("[::1]:1", now=3.0) == 0.0
    assert th.locked("10.0.0.1:1", now=33.0) == 0.0
    th.wrong("10.0.0.1:1", now=100.0)
    th.right("10.0.0.1:2")  # a right token forgets the wrong ones
    th.wrong("10.0.0.1:1", now=101.0)
    th.wrong("10.0.0.1:1", now=102.0)
    assert th.locked("10.0.0.1:1", now=103.0) == 0.0
    for t in range(3):  # guesses spread beyond the window never add up
        th.wrong("10.0.0.3:1", now=100.0 * t)
    assert th.locked("10.0.0.3:1", now=201.0) == 0.0
    small = GuessThrottle(guesses=1, max_peers=8)
    for n in range(100):
        small.wrong(f"10.1.0.{n}:1")
    assert len(small._wrong) <= 8 and len(small._until) <= 8


def test_a_guessing_address_gets_429_on_the_form_and_the_api() -> None:
    with loop_tracker() as t:
        for _ in range(GUESSES):
            assert t.request("POST", "/login", body=b"token=wrong", headers=FORM).status == 401
        right = t.request("POST", "/login", body=b"token=" + t.token, headers=FORM)
        assert right.status == 429 and int(right.headers["Retry-After"]) >= 1 and "Set-Cookie" not in right.headers
        api = t.request("GET", "/api/summary", headers=t.bearer())
        assert api.status == 429 and b"devices" not in api.body
        assert t.request("GET", "/").status == 200  # the login page itself is still served
        t.tracker.web.throttle._until.clear()  # the lockout over
        assert t.request("GET", "/api/summary", headers=t.bearer()).status == 200
        assert t.request("POST", "/login", body=b"token=" + t.token, headers=FORM).status == 303
