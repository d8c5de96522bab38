"""What `farm devices up/down` says, read from the real command against a real tracker and sshd.

Each line must name its reason: a port that accepts TCP but never speaks SSH, a board Python
without numpy and llvmlite, a server that died, a lost SSH connection; lines appear as each
device is done, not when the slowest is; ``--once`` never claims to serve; ``down`` counts the
servers it stopped and leaves no token on the board. Nothing may be left running.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.sshd import SshEndpoint, SshServer, free_port
from tests.support.tracker import REPO_ROOT, TrackerProcess

pytestmark = pytest.mark.usefixtures("no_fleet_leaks")  # tests/support/fixtures.py


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (no SSH banner)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    done.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()


def board(ep: SshEndpoint, workdir: Path, python: str, name: str, **extra: object) -> str:
    fields = {"name": name, "key": "rpi4", "kind": "ssh", "host": "127.0.0.1", "port": ep.port, "user": ep.user,
              "key_file": ep.key_file, "known_hosts": ep.known_hosts, "python": python, "workdir": workdir,
              "connect_timeout": 10, **extra}
    return "".join(f"  {'- ' if i == 0 else '  '}{k}: {v}\n" for i, (k, v) in enumerate(fields.items()))


class Up:
    """``farm devices up`` as a child process; stdout lines kept with the second they arrived."""

    def __init__(self, devices: Path, tracker: TrackerProcess, state: Path, *extra: str) -> None:
        env = dict(os.environ, FARM_TOKEN=tracker.token.decode(), PYTHONPATH=str(REPO_ROOT))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "devices", "up", str(devices), "--tracker", tracker.address,
             "--state-dir", str(state), "--register-timeout", "60", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._err: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=lambda: self._err.extend(self.proc.stderr or ()), daemon=True)
        self._err_reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))
                self._new.notify_all()

    def wait_line(self, pattern: str, timeout: float = 90) -> tuple[float, str]:
        """The first line matching ``pattern`` (a regex), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for t, line in self.lines:
                    if re.search(pattern, line):
                        return t, line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n{self.timed()}\nstderr:\n{self.stderr}")
                self._new.wait(min(left, 0.5))

    def text(self) -> str:
        """The lines as printed (``timed()`` shows when each came)."""
        return "\n".join(line for _, line in self.lines)

    def timed(self) -> str:
        return "\n".join(f"{t:6.1f}s  {line}" for t, line in self.lines)

    def finish(self, timeout: float = 90) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(5)
            self._err_reader.join(5)
        return self.proc.returncode


def farm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {})), stdin=subprocess.DEVNULL)


@pytest.mark.sshd
def test_once_streams_each_line_with_its_reason(tmp_path: Path, tracker: TrackerProcess,
                                                 sshd_endpoint: SshEndpoint, silent_port: int) -> None:
    """A local device's line comes seconds before a silent host's; the silent host is told 'no SSH
    banner'; a board without numpy and llvmlite hears of both; --once does not claim to serve."""
    devices = tmp_path / "devices.yaml"
    devices.write_text(
        "devices:\n  - {name: x86, key: x86, kind: local}\n"
        + board(sshd_endpoint, tmp_path / "wd", sys.executable, "silent", port=silent_port, connect_timeout=8)
        + board(sshd_endpoint, tmp_path / "wd", f"{sys.executable} -S", "bare")
    )
    up = Up(devices, tracker, tmp_path / "state", "--once")
    code = up.finish()
    t_x86, _ = up.wait_line(r"^x86\s+up\s+\S")
    t_silent, silent = up.wait_line(r"^silent\s+FAILED")
    _, bare = up.wait_line(r"^bare\s+FAILED")
    assert t_silent - t_x86 > 3, f"the local device's line waited for the silent host:\n{up.timed()}"
    assert "no SSH banner" in silent and "No existing session" not in silent, silent
    assert "numpy and llvmlite are missing" in bare and "pip install numpy llvmlite" in bare, bare
    _, summary = up.wait_line(r"devices up")
    assert summary.startswith("1/3 devices up; --once: stopping"), summary
    assert "until interrupted" not in up.text()
    assert code == 1
    assert "Traceback" not in up.stderr and "paramiko" not in up.stderr, up.stderr


@pytest.mark.sshd
def test_once_with_every_device_failed(tmp_path: Path, tracker: TrackerProcess, sshd_endpoint: SshEndpoint) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n" + board(sshd_endpoint, tmp_path / "wd", "/nonexistent/python3", "nopython")
                       + board(sshd_endpoint, tmp_path / "wd", sys.executable, "refused", port=free_port()))
    up = Up(devices, tracker, tmp_path / "state", "--once")
    assert up.finish() == 1
    _, summary = up.wait_line(r"devices up")
    assert summary == "0/2 devices up; --once: stopping and exiting", up.text()
    assert "serving" not in up.text() and "until interrupted" not in up.text()
    assert re.search(r"^nopython\s+FAILED\s+ProvisionError: .*not found", up.text(), re.M), up.text()
    assert re.search(r"^refused\s+FAILED\s+DeviceUnreachable: .*refused", up.text(), re.M | re.I), up.text()


def _server_pid(pidfile: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(pidfile.read_text().split()[1])
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    raise AssertionError(f"no pidfile {pidfile}")


def _kill_ssh_sessions(server: SshServer) -> int:
    """Cut every SSH connection to ``server`` (its per-connection sshd processes), like a board reboot's
    network loss; the listener stays up so the board can be reached again."""
    assert server.proc is not None
    sessions = [p for p in procs.descendants(server.proc.pid) if procs.cmdline(p).startswith("sshd")]
    for p in sessions:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(sessions)


@pytest.mark.sshd
@pytest.mark.slow
def test_restarts_say_why_and_back_then_down_counts_and_removes_the_token(
    tmp_path: Path, tracker: TrackerProcess, sshd_server: SshServer
) -> None:
    ep = sshd_server.endpoint
    assert ep is not None
    wd, state = tmp_path / "wd", tmp_path / "state"
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - {name: x86, key: x86, kind: local}\n" + board(ep, wd, sys.executable, "board"))
    up = Up(devices, tracker, state)
    try:
        up.wait_line(r"^2/2 devices up; serving until interrupted")
        assert (wd / "token").is_file(), "the board's servers read the token from its workdir"

        # A board server that dies: its exit status is the reason, then the board is back.
        os.kill(_server_pid(wd / "run" / "board.pid"), signal.SIGKILL)
        _, line = up.wait_line(r"^board\s+restart\s+attempt 1: ")
        assert "device server board exited with status 137 (killed by SIGKILL)" in line, line
        up.wait_line(r"^board\s+back\s+\S+.*\(after 1 attempt")

        # A local server that dies: the same.
        (local_pidfile,) = state.glob("*/run/x86.pid")
        os.kill(_server_pid(local_pidfile), signal.SIGKILL)
        _, line = up.wait_line(r"^x86\s+restart\s+attempt 1: ")
        assert "device server x86 exited with status 137 (killed by SIGKILL)" in line, line
        up.wait_line(r"^x86\s+back\s+")

        # The SSH connection to the board drops: that is the reason given.
        before = len(up.lines)
        assert _kill_ssh_sessions(sshd_server) > 0
        _, line = up.wait_line(r"^board\s+restart\s+attempt 1: SSH connection to board .* lost")
        deadline = time.monotonic() + 90
        while not any(re.match(r"^board\s+back", x) for _, x in up.lines[before:]):
            assert time.monotonic() < deadline, up.text()
            time.sleep(0.2)

        down = farm("devices", "down", str(devices), "--state-dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr
        assert re.search(r"^x86\s+down\s+stopped 1 server\(s\)$", down.stdout, re.M), down.stdout
        assert re.search(r"^board\s+down\s+stopped 1 server\(s\); token removed$", down.stdout, re.M), down.stdout
        assert up.finish() == 0, up.text() + up.stderr
    finally:
        if up.proc.poll() is None:
            up.proc.terminate()
            up.finish()
        print(up.timed())  # shown on failure (or with -s): what the user saw
    assert not (wd / "token").exists(), "down must remove the token from the board"
    assert not list(state.glob("*/token")), "and the copy the local servers read"
    assert "Traceback" not in up.stderr, up.stderr
