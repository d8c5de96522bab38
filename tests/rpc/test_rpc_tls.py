"""TLS on the wire (tracker with a certificate; device and client verify it),
and the tracker's import hygiene."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rpc.client import Client
from rpc.errors import ConnectionLost
from rpc.transport import make_ssl_contexts
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import ROOT, LocalFarm


def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60,
    )
    if r.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {r.stderr[-200:]!r}")
    return str(cert), str(key)


def test_tls_tracker_device_and_client(tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start_tracker(0, "--tls-cert", cert, "--tls-key", key)
        farm.start_server("k", "tests.rpc.fake_backend:FakeBackend", "--tls-ca", cert)
        _, ctx = make_ssl_contexts(None, None, cert)
        with Client(farm.address, farm.token.encode(), ssl_context=ctx) as c:
            farm.wait_devices(c, 1)
            art = fake_artifact("ok", tag="tls")
            assert c.result(c.submit(art.header(), art.code, "k", {}), timeout=30)["outcome"] == "OK"
        with pytest.raises(ConnectionLost):  # plain TCP to a TLS tracker gets nowhere
            Client(farm.address, farm.token.encode(), timeout=3)
    finally:
        leaked = farm.close()
    assert not leaked


def test_tracker_imports_no_numpy_or_llvmlite():
    # farm's records and errors are standard library only; nothing else of farm may come along
    code = ("import sys, rpc.tracker, rpc.server, rpc.client, rpc.cli, rpc.queue; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'llvmlite', 'xgboost', 'ray') "
            "or (m.startswith('farm.') and not m.startswith(('farm.records', 'farm.errors')))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
