"""Provision a board over SSH and start its device servers behind a reverse tunnel.

Steps, each failing with a typed error that names the board: probe the remote
Python (version, machine, numpy, llvmlite); install this checkout's wheel under
``WORKDIR/lib/<hash>`` unless that exact version is already there; write the
token (mode 0600); open one reverse forward to the tracker; start each server
through ``devices.fleet.launch``, whose stdin is the SSH channel, so the servers stop
when the connection does.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.fleet.ssh import CommandResult, DeviceUnreachable, ProvisionError, SshConnection, remote_dir, translated
from devices.fleet.wheel import Wheel
from devices.registry import DeviceSpec

log = logging.getLogger(__name__)

MIN_PYTHON = (3, 11)
PROBE = r"""
import json, platform, sys
r = {"python": list(sys.version_info[:3]), "machine": platform.machine(), "executable": sys.executable}
for m in ("numpy", "llvmlite"):
    try:
        r[m] = __import__(m).__version__
    except Exception as e:
        r[m] = None
        r[m + "_error"] = type(e).__name__ + ": " + str(e)
print("KFPROBE " + json.dumps(r))
"""
UNZIP = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"


@dataclass(frozen=True)
class RemoteInfo:
    """What the probe found on the board."""

    python: tuple[int, ...]
    machine: str
    numpy: str
    llvmlite: str


@dataclass
class RemoteServer:
    """One started server: its name, its launcher's channel and pids."""

    name: str
    channel: Any
    launcher_pid: int
    server_pid: int
    log_path: str

    def exited(self) -> bool:
        return bool(self.channel.exit_status_ready() or self.channel.closed)

    def exit_status(self) -> int | None:
        """The launcher's exit status (the server's), None if the channel closed without one."""
        return int(self.channel.recv_exit_status()) if self.channel.exit_status_ready() else None


class Board:
    """A remote device being provisioned and served; wraps one ``SshConnection``."""

    def __init__(self, spec: DeviceSpec, conn: SshConnection | None = None) -> None:
        assert spec.ssh is not None, "Board needs an ssh device"
        self.spec = spec
        self.ssh = spec.ssh
        self.conn = conn or SshConnection(spec.ssh, spec.name)
        self.python = spec.ssh.python
        self._wd = ""

    # -- provisioning -------------------------------------------------------------
    def workdir(self) -> str:
        if not self._wd:
            wd = remote_dir(self.ssh.workdir)
            res = self.conn.run(f"mkdir -p {wd}/lib {wd}/run {wd}/logs && cd {wd} && pwd")
            if res.status != 0:
                raise ProvisionError(
                    f"{self.conn.where}: cannot create workdir {self.ssh.workdir}: {res.stderr.strip()}"
                )
            self._wd = res.stdout.strip().splitlines()[-1]
        return self._wd

    def _py(self, code: str, *args: str, timeout: float = 300.0) -> CommandResult:
        argv = " ".join(shlex.quote(a) for a in args)
        return self.conn.run(f"{self.python} -c {shlex.quote(code)} {argv}", timeout=timeout)

    def probe(self) -> RemoteInfo:
        """Check the remote Python, numpy and llvmlite; raise ``ProvisionError`` naming what is missing."""
        res = self._py(PROBE, timeout=300.0)
        line = next((x for x in res.stdout.splitlines() if x.startswith("KFPROBE ")), None)
        if line is None:
            tail = (res.stderr or res.stdout).strip()[-300:]
            what = "not found" if res.status == 127 else f"failed (exit {res.status})"
            raise ProvisionError(f"{self.conn.where}: remote python {self.python!r} {what}: {tail}")
        info = json.loads(line[len("KFPROBE "):])
        version = tuple(info["python"])
        if version < MIN_PYTHON:
            need = ".".join(map(str, MIN_PYTHON))
            raise ProvisionError(f"{self.conn.where}: remote python is {'.'.join(map(str, version))}, need >= {need}")
        missing = [mod for mod in ("numpy", "llvmlite") if not info.get(mod)]
        if missing:
            # Name every missing module at once: fixing one only to be told about the next wastes a round trip.
            what = " and ".join(missing)
            why = "; ".join(f"{m}: {info.get(m + '_error') or 'not importable'}" for m in missing)
            raise ProvisionError(
                f"{self.conn.where}: {what} {'is' if len(missing) == 1 else 'are'} missing on the board "
                f"({why}); install for {self.python}: pip install {' '.join(missing)}"
            )
        return RemoteInfo(version, str(info["machine"]), str(info["numpy"]), str(info["llvmlite"]))

    def lib_dir(self, wheel: Wheel) -> str:
        return f"{self.workdir()}/lib/{wheel.tag}"

    def install(self, wheel: Wheel) -> bool:
        """Upload and unpack ``wheel`` unless that exact build is there; True if it uploaded."""
        lib = self.lib_dir(wheel)
        if self.conn.run(f"test -f {shlex.quote(lib)}/.complete").status == 0:
            return False
        remote_whl = f"{self.workdir()}/lib/{wheel.path.name}.{wheel.tag}"
        self.conn.put_bytes(wheel.path.read_bytes(), remote_whl)
        tmp = f"{lib}.tmp"
        q_tmp, q_lib, q_whl = shlex.quote(tmp), shlex.quote(lib), shlex.quote(remote_whl)
        res = self.conn.run(
            f"rm -rf {q_tmp} && {self.python} -c {shlex.quote(UNZIP)} {q_whl} {q_tmp}"
            f" && rm -rf {q_lib} && mv {q_tmp} {q_lib} && touch {q_lib}/.complete && rm -f {q_whl}",
            timeout=300.0,
        )
        if res.status != 0:
            raise ProvisionError(f"{self.conn.where}: unpacking the wheel failed: {res.stderr.strip()[-300:]}")
        log.info("%s: installed %s", self.conn.where, wheel.path.name)
        return True

    def put_token(self, token: bytes) -> str:
        path = f"{self.workdir()}/token"
        self.conn.put_bytes(token, path, mode=0o600)
        return path

    def remove_token(self) -> None:
        """Delete the token file: servers read it once at start, and it lets its holder run code."""
        res = self.conn.run(f"rm -f {shlex.quote(self.workdir() + '/token')}", timeout=30)
        if res.status != 0:
            raise ProvisionError(f"{self.conn.where}: cannot remove the token file: {res.stderr.strip()[-300:]}")

    # -- serving ------------------------------------------------------------------
    def start_server(
        self, name: str, wheel: Wheel, tracker_port: int, token_path: str, startup_timeout: float = 120.0
    ) -> RemoteServer:
        wd = self.workdir()
        kind = self.spec.backend
        pidfile, logfile = f"{wd}/run/{name}.pid", f"{wd}/logs/{name}.log"
        serve = ["--tracker", f"127.0.0.1:{tracker_port}", "--key", self.spec.key, "--kind", kind,
                 "--name", name, "--token-file", token_path]  # fmt: skip
        launch = ["-m", "devices.fleet.launch", "--pidfile", pidfile, "--log", logfile, "--", *serve]
        cmd = (
            f"cd {shlex.quote(wd)} && PYTHONPATH={shlex.quote(self.lib_dir(wheel))} "
            f"exec {self.python} " + " ".join(shlex.quote(a) for a in launch)
        )
        chan = self.conn.start(cmd)
        pids = self._read_pids(chan, startup_timeout)
        if pids is None:
            status = chan.recv_exit_status() if chan.exit_status_ready() else None
            err = chan.recv_stderr(8192).decode(errors="replace") if chan.recv_stderr_ready() else ""
            chan.close()
            raise ProvisionError(
                f"{self.conn.where}: launcher for {name} did not start (exit {status}): {err.strip()[-300:]}"
            )
        return RemoteServer(name, chan, pids[0], pids[1], logfile)

    @staticmethod
    def _read_pids(chan: Any, timeout: float) -> tuple[int, int] | None:
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if chan.recv_ready():
                buf += chan.recv(4096)
                if b"\n" in buf:
                    try:
                        d = json.loads(buf.split(b"\n", 1)[0])
                        return int(d["launcher"]), int(d["server"])
                    except (ValueError, KeyError):
                        return None
            elif chan.exit_status_ready() or chan.closed:
                return None
            else:
                time.sleep(0.05)
        return None

    def log_tail(self, server: RemoteServer, lines: int = 15) -> str:
        try:
            res = self.conn.run(f"tail -n {lines} {shlex.quote(server.log_path)}", timeout=30)
        except DeviceUnreachable:
            return "(log unavailable: connection lost)"
        return res.stdout.strip()

    def stop_servers(self, grace: float = 5.0) -> list[dict[str, Any]]:
        """Stop every server this device's pidfiles name (``farm devices down``)."""
        return self._pidfiles("--stop", "stopping servers", "--grace", str(grace))

    def running_servers(self) -> list[dict[str, Any]]:
        """The pidfiles of this device whose launcher or server still runs."""
        return self._pidfiles("--list", "listing servers")

    def _pidfiles(self, action: str, what: str, *extra: str) -> list[dict[str, Any]]:
        # launch.py runs from its source: the installed wheel may be gone or from another build.
        src = Path(__file__).with_name("launch.py").read_text()
        pattern = f"{self.workdir()}/run/{self.spec.name}*.pid"
        res = self._py(src, action, pattern, *extra, timeout=120.0)
        lines = res.stdout.strip().splitlines()
        if res.status != 0 or not lines:
            raise ProvisionError(f"{self.conn.where}: {what} failed: {res.stderr.strip()[-300:]}")
        try:
            entries: list[dict[str, Any]] = json.loads(lines[-1])
        except ValueError:
            raise ProvisionError(f"{self.conn.where}: {what}: unexpected output {lines[-1][:200]!r}") from None
        return entries

    def close(self) -> None:
        with translated(self.conn.where):
            self.conn.close()
