"""SSH to a board with paramiko: lazy connection, commands, uploads, reverse tunnels.

This is the boundary where paramiko's and the socket layer's exceptions become
kernelfarm's: ``DeviceUnreachable`` (and its subclasses) for anything that
stops us from talking to the board. Callers classify by type only.
"""
from __future__ import annotations

import contextlib
import getpass
import io
import logging
import os
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.fleet.tunnel import ReverseForward
from devices.registry import SshSpec
from farm.errors import FarmError

log = logging.getLogger(__name__)


class DeviceUnreachable(FarmError):
    """The board cannot be reached or logged into (network, refused, auth, host key)."""


class HostKeyMismatch(DeviceUnreachable):
    """The board's host key is unknown (strict policy) or differs from known_hosts."""


class AuthenticationFailed(DeviceUnreachable):
    """The board refused every key offered."""


class ProvisionError(FarmError):
    """The board was reached but cannot run a device server (no Python, numpy, crash...)."""


@dataclass(frozen=True)
class Endpoint:
    """An ``SshSpec`` with ssh_config aliases and defaults resolved."""

    host: str
    port: int
    user: str
    key_file: Path | None
    use_agent: bool
    known_hosts: Path
    host_key_policy: str
    timeout: float

    @property
    def display(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def resolve(spec: SshSpec, home: Path | None = None) -> Endpoint:
    """Fill what the YAML left out from the ssh_config alias, then from ssh's defaults."""
    home = home or Path.home()
    cfg: dict[str, Any] = {}
    if spec.ssh_config:
        import paramiko

        path = spec.ssh_config_file or home / ".ssh" / "config"
        try:
            cfg = dict(paramiko.SSHConfig.from_path(str(path)).lookup(spec.ssh_config))
        except (OSError, paramiko.SSHException) as e:
            raise DeviceUnreachable(f"cannot read ssh config {path}: {e}") from None
    key_file = spec.key_file
    if key_file is None and cfg.get("identityfile"):
        key_file = Path(os.path.expanduser(cfg["identityfile"][0]))
    return Endpoint(
        host=spec.host or str(cfg.get("hostname") or spec.ssh_config),
        port=int(spec.port or cfg.get("port") or 22),
        user=spec.user or str(cfg.get("user") or getpass.getuser()),
        key_file=key_file,
        use_agent=spec.use_agent,
        known_hosts=spec.known_hosts or home / ".ssh" / "known_hosts",
        host_key_policy=spec.host_key_policy,
        timeout=spec.connect_timeout,
    )


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Turn paramiko/socket errors raised inside into ``DeviceUnreachable`` subclasses."""
    import paramiko

    try:
        yield
    except paramiko.BadHostKeyException as e:
        raise HostKeyMismatch(
            f"{where}: host key mismatch: known_hosts has a different {e.expected_key.get_name()} key "
            f"for this host (possible man-in-the-middle; fix known_hosts if the board was reinstalled)"
        ) from None
    except paramiko.AuthenticationException as e:
        raise AuthenticationFailed(f"{where}: authentication failed: {e}") from None
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        reasons = "; ".join(sorted({os.strerror(err.errno) if err.errno else str(err) for err in e.errors.values()}))
        raise DeviceUnreachable(f"{where}: cannot connect: {reasons}") from None
    except TimeoutError:
        raise DeviceUnreachable(f"{where}: timed out") from None
    except (paramiko.SSHException, EOFError) as e:
        raise DeviceUnreachable(f"{where}: ssh error: {e or type(e).__name__}") from None
    except OSError as e:
        raise DeviceUnreachable(f"{where}: {e.strerror or e}") from None


def _no_banner(client: Any) -> bool:
    """True when the server never sent its SSH banner.

    paramiko's negotiation wait and its banner wait time out independently: when the first
    wins, ``connect`` goes on and fails with "No existing session", and the real reason is
    only logged by the transport thread. The transport's ``remote_version`` says which it was.
    """
    transport = client.get_transport()
    return transport is not None and not getattr(transport, "remote_version", "")


def _strict_policy(where: str, known_hosts: Path) -> Any:
    import paramiko

    class Strict(paramiko.MissingHostKeyPolicy):
        """Like RejectPolicy, but raises our own type (paramiko's is a bare SSHException)."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyMismatch(
                f"{where}: host key unknown: {hostname} has no {key.get_name()} entry in {known_hosts} "
                "(strict policy; add it with ssh-keyscan or set host_key_policy: accept-new)"
            )

    return Strict()


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str


class SshConnection:
    """One SSH connection to a board; connects on first use. A context manager."""

    def __init__(self, spec: SshSpec, name: str = "") -> None:
        self.spec = spec
        self.endpoint = resolve(spec)
        self.where = f"{name} ({self.endpoint.display})" if name else self.endpoint.display
        self._client: Any = None
        self._lock = threading.Lock()
        self._forwards: list[ReverseForward] = []

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        import paramiko

        ep = self.endpoint
        client = paramiko.SSHClient()
        with translated(self.where):
            if ep.known_hosts.is_file():
                client.load_host_keys(str(ep.known_hosts))
            if ep.host_key_policy == "accept-new":
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            else:
                client.set_missing_host_key_policy(_strict_policy(self.where, ep.known_hosts))
            try:
                client.connect(
                    ep.host, port=ep.port, username=ep.user,
                    key_filename=str(ep.key_file) if ep.key_file else None,
                    allow_agent=ep.use_agent, look_for_keys=ep.key_file is None and ep.use_agent,
                    timeout=ep.timeout, banner_timeout=ep.timeout, auth_timeout=ep.timeout,
                )  # fmt: skip
            except paramiko.SSHException as e:
                silent = _no_banner(client)
                client.close()
                if silent and not isinstance(e, paramiko.BadHostKeyException):
                    raise DeviceUnreachable(
                        f"{self.where}: no SSH banner in {ep.timeout:.0f} s: the port accepts connections "
                        "but does not speak SSH (wrong port, or sshd is stuck)"
                    ) from None
                raise
            except BaseException:
                client.close()
                raise
            if ep.host_key_policy == "accept-new":
                ep.known_hosts.parent.mkdir(parents=True, exist_ok=True)
                client.save_host_keys(str(ep.known_hosts))
            client.get_transport().set_keepalive(15)
        log.debug("connected to %s", self.where)
        return client

    @property
    def transport(self) -> Any:
        return self.client.get_transport()

    def is_active(self) -> bool:
        return (
            self._client is not None
            and self._client.get_transport() is not None
            and self._client.get_transport().is_active()
        )

    def run(self, command: str, *, timeout: float = 120.0, stdin: bytes | None = None) -> CommandResult:
        """Run a shell command on the board and wait for it."""
        with translated(self.where):
            chan = self.transport.open_session(timeout=self.endpoint.timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = io.BytesIO(), io.BytesIO()
            # Drain both streams as they come, or a chatty command fills a window and stalls.
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                else:
                    chan.status_event.wait(0.05)
            status = chan.recv_exit_status()
            chan.close()
        return CommandResult(status, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace"))

    def start(self, command: str) -> Any:
        """Start a long-running command; return its channel (stdin open, for liveness)."""
        with translated(self.where):
            chan = self.transport.open_session(timeout=self.endpoint.timeout)
            chan.exec_command(command)
            return chan

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        with translated(self.where):
            sftp = self.client.open_sftp()
            try:
                with sftp.open(remote_path + ".part", "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
                sftp.chmod(remote_path + ".part", mode)
                sftp.posix_rename(remote_path + ".part", remote_path)
            finally:
                sftp.close()

    def forward(self, target: tuple[str, int]) -> ReverseForward:
        """Reverse-forward a fresh port on the board's loopback to ``target`` here."""
        fwd = ReverseForward(self.transport, target)
        with translated(self.where):
            fwd.open()
        self._forwards.append(fwd)
        return fwd

    def close(self) -> None:
        for fwd in self._forwards:
            fwd.close()
        self._forwards.clear()
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remote_dir(path: str) -> str:
    """A shell word for a remote path, keeping ``~`` expandable on the remote side."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
