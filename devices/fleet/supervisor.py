"""Bring a fleet up and down: local servers as processes, boards over SSH, concurrently.

``Fleet.up()`` returns a ``FleetResult``: one ``DeviceOutcome`` per device,
``.failed`` for the ones that did not come up. One board's failure never stops
another's bring-up, and no exception escapes for a single device. While
``Fleet.watch()`` runs, a server that drops (crash, board reboot, lost SSH) is
restarted with exponential backoff. State lives in ``state_dir`` (pidfiles of
local servers, ``status.json`` for ``farm devices status``, ``up.pid``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.fleet import launch
from devices.fleet.ssh import DeviceUnreachable, ProvisionError
from devices.fleet.wheel import Wheel, build_wheel
from devices.registry import DeviceSpec, FleetSpec
from farm.errors import FarmError
from rpc.transport import parse_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceOutcome:
    """How one device fared: ``ok`` with fingerprints, or the reason it failed."""

    name: str
    ok: bool
    message: str
    error_type: str = ""
    servers: tuple[str, ...] = ()
    fingerprint: dict[str, Any] = field(default_factory=dict)


class FleetResult(Mapping[str, DeviceOutcome]):
    """Per-device outcomes in file order; ``.failed`` holds the ones that went wrong."""

    def __init__(self, outcomes: list[DeviceOutcome]) -> None:
        self._by_name = {o.name: o for o in outcomes}

    def __getitem__(self, name: str) -> DeviceOutcome:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def failed(self) -> dict[str, DeviceOutcome]:
        return {n: o for n, o in self._by_name.items() if not o.ok}

    @property
    def ok(self) -> bool:
        return not self.failed


def fleet_state_dir(state_root: Path, spec: FleetSpec) -> Path:
    import hashlib

    tag = hashlib.sha256(str(Path(spec.path).resolve()).encode()).hexdigest()[:10]
    return state_root / f"{Path(spec.path).stem}-{tag}"


class _LocalServer:
    """A launcher process on this machine; its stdin pipe ties it to us."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()  # EOF: the launcher stops its server and exits
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""


@dataclass
class _Running:
    spec: DeviceSpec
    servers: list[Any] = field(default_factory=list)
    board: Any = None  # remote.Board for ssh devices
    failures: int = 0
    next_try: float = 0.0
    outcome: DeviceOutcome | None = None


class Fleet:
    """The devices of one ``FleetSpec``, served to one tracker."""

    def __init__(
        self, spec: FleetSpec, tracker: str, token: bytes, state_dir: Path, *,
        register_timeout: float = 180.0, backoff_cap: float = 60.0, wheel_dir: Path | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.tracker = tracker
        self.tracker_addr = parse_address(tracker)
        self.token = token
        self.state_dir = fleet_state_dir(state_dir, spec)
        self.register_timeout = register_timeout
        self.backoff_cap = backoff_cap
        self.wheel_dir = wheel_dir or self.state_dir / "wheel"
        self._wheel: Wheel | None = None
        self._running: dict[str, _Running] = {d.name: _Running(d) for d in spec.devices}
        self._lock = threading.Lock()

    # -- bring-up ---------------------------------------------------------------
    def up(self) -> FleetResult:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "token").write_bytes(self.token)
        os.chmod(self.state_dir / "token", 0o600)
        if any(d.remote for d in self.spec.devices):
            self._wheel = build_wheel(self.wheel_dir)
        with ThreadPoolExecutor(max_workers=min(32, len(self.spec.devices))) as pool:
            outcomes = list(pool.map(self._bring_up, self.spec.devices))
        self._write_status()
        return FleetResult(outcomes)

    def _bring_up(self, dev: DeviceSpec) -> DeviceOutcome:
        run = self._running[dev.name]
        try:
            if dev.remote:
                self._up_remote(run)
            else:
                self._up_local(run)
            fps = self._await_registration(run)
            first = fps[dev.server_names()[0]]
            outcome = DeviceOutcome(dev.name, True, _summary(first), servers=tuple(fps), fingerprint=first)
            run.failures = 0
        except (DeviceUnreachable, ProvisionError, FarmError, OSError) as e:
            outcome = DeviceOutcome(dev.name, False, str(e), type(e).__name__)
            self._teardown(run)
        except Exception as e:  # one device's bug must not hide the others' outcomes
            log.exception("bring-up of %s failed unexpectedly", dev.name)
            outcome = DeviceOutcome(dev.name, False, f"unexpected {type(e).__name__}: {e}", type(e).__name__)
            self._teardown(run)
        run.outcome = outcome
        log.info("%s: %s", dev.name, "up" if outcome.ok else f"failed: {outcome.message}")
        return outcome

    def _up_local(self, run: _Running) -> None:
        dev = run.spec
        kind = dev.backend
        for name in dev.server_names():
            log_path = self.state_dir / "logs" / f"{name}.log"
            argv = [sys.executable, "-m", launch.MARKER, "--pidfile", str(self.state_dir / "run" / f"{name}.pid"),
                    "--log", str(log_path), "--", "--tracker", self.tracker, "--key", dev.key, "--kind", kind,
                    "--name", name, "--token-file", str(self.state_dir / "token")]  # fmt: skip
            env = dict(os.environ)
            src = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True
            )
            run.servers.append(_LocalServer(name, proc, log_path))

    def _up_remote(self, run: _Running) -> None:
        from devices.fleet.remote import Board  # paramiko is only needed for boards

        assert self._wheel is not None
        board = Board(run.spec)
        run.board = board
        board.probe()
        board.install(self._wheel)
        token_path = board.put_token(self.token)
        fwd = board.conn.forward(self.tracker_addr)
        for name in run.spec.server_names():
            run.servers.append(board.start_server(name, self._wheel, fwd.remote_port, token_path))

    def _await_registration(self, run: _Running) -> dict[str, dict[str, Any]]:
        """Wait until every server of the device is registered; return fingerprints by name."""
        from rpc.client import Client
        from rpc.errors import RpcError

        want = set(run.spec.server_names())
        deadline = time.monotonic() + self.register_timeout
        with Client(self.tracker, self.token) as client:
            while True:
                for srv in run.servers:
                    if srv.exited():
                        tail = run.board.log_tail(srv) if run.board else srv.tail()
                        raise ProvisionError(f"device server {srv.name} exited during start-up:\n{tail}")
                try:
                    seen = {d["name"]: d.get("fingerprint", {}) for d in client.describe(run.spec.key)}
                except RpcError as e:
                    raise ProvisionError(f"tracker {self.tracker}: {e}") from None
                if want <= set(seen):
                    return {n: seen[n] for n in sorted(want)}
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(want - set(seen)))
                    raise ProvisionError(
                        f"{missing} did not register with {self.tracker} in {self.register_timeout:.0f} s"
                    )
                time.sleep(0.25)

    # -- supervision ------------------------------------------------------------
    def watch(self, stop: threading.Event, poll: float = 1.0) -> None:
        """Until ``stop`` is set: restart devices whose servers dropped, with backoff."""
        while not stop.wait(poll):
            for run in self._running.values():
                dropped = run.outcome is None or not run.outcome.ok or any(s.exited() for s in run.servers)
                if run.board is not None and not run.board.conn.is_active():
                    dropped = True
                if not dropped or time.monotonic() < run.next_try:
                    continue
                self._teardown(run)
                run.failures += 1
                delay = min(self.backoff_cap, 2.0 ** min(run.failures, 10))
                log.warning("%s dropped; restarting (attempt %d)", run.spec.name, run.failures)
                outcome = self._bring_up(run.spec)
                if not outcome.ok:
                    run.next_try = time.monotonic() + delay
                self._write_status()

    # -- teardown ---------------------------------------------------------------
    def _teardown(self, run: _Running) -> None:
        for srv in run.servers:
            if isinstance(srv, _LocalServer):
                srv.stop()
        if run.board is not None:
            try:
                if run.board.conn.is_active():
                    run.board.stop_servers()
            except (DeviceUnreachable, ProvisionError) as e:
                log.warning("%s: stopping servers: %s", run.spec.name, e)
            run.board.conn.close()  # closing the channels also ends any launcher left
            run.board = None
        run.servers = []

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=min(32, len(self._running))) as pool:
            list(pool.map(self._teardown, self._running.values()))
        for run in self._running.values():
            run.outcome = None
        self._write_status(final=True)

    def _write_status(self, final: bool = False) -> None:
        data = {
            "file": str(self.spec.path), "tracker": self.tracker, "pid": os.getpid(), "updated": time.time(),
            "running": not final,
            "devices": {n: (asdict(r.outcome) if r.outcome else {"name": n, "ok": False, "message": "stopped"})
                        for n, r in self._running.items()},
        }  # fmt: skip
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.state_dir / "status.json")


def _summary(fp: dict[str, Any]) -> str:
    cpu = fp.get("cpu") if isinstance(fp.get("cpu"), dict) else {}
    parts = [
        str(fp.get("triple") or fp.get("isa") or cpu.get("triple") or ""),
        str(cpu.get("name") or fp.get("cpu_name") or ""),
    ]
    cores = fp.get("cores") or cpu.get("cores")
    if cores:
        parts.append(f"{cores} cores")
    return " ".join(p for p in parts if p) or "registered"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_up_process(state: Path, timeout: float = 60.0) -> int | None:
    """SIGTERM a running ``farm devices up`` for this fleet and wait; return its pid if one ran."""
    import signal

    try:
        pid = int((state / "up.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"devices" not in cmd or not _pid_alive(pid):  # a stale file whose pid was reused
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    return pid


def down(spec: FleetSpec, state_root: Path, grace: float = 5.0) -> FleetResult:
    """Stop this fleet everywhere: the ``up`` process, local servers, then each board."""
    state = fleet_state_dir(state_root, spec)
    stop_up_process(state)
    local = launch.stop(str(state / "run" / "*.pid"), grace) if (state / "run").is_dir() else []

    def one(dev: DeviceSpec) -> DeviceOutcome:
        if not dev.remote:
            names = set(dev.server_names())
            n = sum(1 for s in local if Path(str(s["pidfile"])).stem in names and s["pids"])
            return DeviceOutcome(dev.name, True, f"stopped {n} server(s)")
        from devices.fleet.remote import Board

        board = None
        try:
            board = Board(dev)
            stopped = board.stop_servers(grace)
            n = sum(1 for s in stopped if s["pids"])
            return DeviceOutcome(dev.name, True, f"stopped {n} server(s)")
        except (DeviceUnreachable, ProvisionError) as e:
            return DeviceOutcome(dev.name, False, str(e), type(e).__name__)
        finally:
            if board is not None:
                board.conn.close()

    with ThreadPoolExecutor(max_workers=min(32, len(spec.devices))) as pool:
        result = FleetResult(list(pool.map(one, spec.devices)))
    status = state / "status.json"
    if status.is_file():
        data = json.loads(status.read_text())
        data.update(running=False, updated=time.time())
        status.write_text(json.dumps(data, indent=1))
    return result


def statuses(state_root: Path) -> list[dict[str, Any]]:
    """What every fleet under ``state_root`` last reported, with whether its ``up`` still runs."""
    out = []
    for path in sorted(state_root.glob("*/status.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(data.get("pid", 0) or 0)
        data["running"] = bool(data.get("running")) and pid > 0 and _pid_alive(pid)
        out.append(data)
    return out
