"""The loopback sshd fixture: key login works, a wrong host key is refused, nothing leaks."""
from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from tests.support import procs
from tests.support.sshd import SshEndpoint, SshServer

pytestmark = pytest.mark.sshd


def _client(ep: SshEndpoint, known_hosts: Path) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.load_host_keys(str(known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(**ep.connect_kwargs(), look_for_keys=False, allow_agent=False, timeout=10)
    return c


def test_key_login_and_exec(sshd_endpoint: SshEndpoint) -> None:
    with _client(sshd_endpoint, sshd_endpoint.known_hosts) as c:
        _, out, _ = c.exec_command("echo $((6*7)); uname -m")
        assert out.read().split() == [b"42", b"x86_64"]
        sftp = c.open_sftp()
        assert sftp.stat(str(sshd_endpoint.key_file)).st_size > 0
        sftp.close()


def test_wrong_host_key_is_refused(sshd_endpoint: SshEndpoint, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    # A syntactically valid but different ed25519 key for the same [host]:port.
    fake = "AAAAC3NzaC1lZDI1NTE5AAAAIBq6y6o7S1o2S4z1o3q4o5q6o7q8o9r0r1r2r3r4r5r6"
    other.write_text(f"[127.0.0.1]:{sshd_endpoint.port} ssh-ed25519 {fake}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _client(sshd_endpoint, other)


def test_close_reaps_listener_and_sessions(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "s")
    ep = server.start()
    assert server.proc is not None
    pid = server.proc.pid
    c = _client(ep, ep.known_hosts)
    c.exec_command("sleep 300")
    sessions = procs.descendants(pid)
    assert sessions, "expected session processes under sshd"
    server.close()
    c.close()
    alive = [p for p in [pid, *sessions] if procs.is_alive(p)]
    assert not alive, procs.describe(alive)
