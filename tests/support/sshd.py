"""A real OpenSSH sshd on 127.0.0.1 for tests, with throwaway keys.

``SshServer`` writes ed25519 host and user keys plus an ``sshd_config`` into a
temporary directory, runs ``sshd -D -e -f CONFIG`` as a child process on a free
high port and waits until it answers with an SSH banner. ``close()`` reaps the
listener and every session process it forked (sessions outlive a killed
listener, so they are found through /proc).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procs

log = logging.getLogger(__name__)

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


class SshdUnavailable(RuntimeError):
    """No sshd binary (apt-get install openssh-server) or it would not start."""


def find_sshd() -> str | None:
    for cand in SSHD_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "kernelfarm-test") -> Path:
    """An unencrypted ed25519 key pair at ``path`` and ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


@dataclass(frozen=True)
class SshEndpoint:
    """What a test needs to reach the server: address, user, key and known_hosts."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    host_public_key: str

    def connect_kwargs(self) -> dict[str, Any]:
        return {"hostname": self.host, "port": self.port, "username": self.user, "key_filename": str(self.key_file)}


class SshServer:
    """One sshd child process; use as a context manager."""

    def __init__(self, workdir: Path, *, extra_config: str = "") -> None:
        self.workdir = Path(workdir)
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: SshEndpoint | None = None
        self._log_path = self.workdir / "sshd.log"

    def start(self, attempts: int = 3) -> SshEndpoint:
        sshd = find_sshd()
        if sshd is None:
            raise SshdUnavailable("sshd not found (apt-get install openssh-server)")
        # sshd insists on its privilege-separation directory even when running as a child.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = keygen(self.workdir / "ssh_host_ed25519_key", "kf-host")
        user_key = keygen(self.workdir / "id_ed25519", "kf-user")
        auth = self.workdir / "authorized_keys"
        shutil.copyfile(user_key.with_suffix(".pub"), auth)
        auth.chmod(0o600)
        user = os.environ.get("USER") or "root"
        if os.getuid() == 0:
            user = "root"
        host_pub = (self.workdir / "ssh_host_ed25519_key.pub").read_text().split()
        last_err = ""
        # The free port can be taken between probing and sshd binding it: retry.
        for _ in range(attempts):
            port = free_port()
            config = self._write_config(port, host_key, auth)
            self.proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self._log_path, "ab"),
            )
            if self._wait_banner(port):
                known = self.workdir / "known_hosts"
                known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
                self.endpoint = SshEndpoint(
                    "127.0.0.1", port, user, user_key, known, f"{host_pub[0]} {host_pub[1]}"
                )
                log.info("sshd pid %d on 127.0.0.1:%d", self.proc.pid, port)
                return self.endpoint
            last_err = self.log_text()[-2000:]
            self._reap()
        raise SshdUnavailable(f"sshd did not start: {last_err}")

    def _write_config(self, port: int, host_key: Path, auth: Path) -> Path:
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The key files live in a world-readable tmp dir.
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "Subsystem sftp internal-sftp",
                    # Many concurrent test connections come from one source.
                    "MaxStartups 100",
                    "MaxSessions 50",
                    "LogLevel VERBOSE",
                    self.extra_config,
                    "",
                ]
            )
        )
        return config

    def _wait_banner(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _reap(self) -> None:
        if self.proc is None:
            return
        # Sessions are forked children of the listener; collect them before it dies.
        tree = procs.descendants(self.proc.pid)
        procs.kill_all([self.proc.pid, *tree])
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self._reap()

    def __enter__(self) -> SshEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
