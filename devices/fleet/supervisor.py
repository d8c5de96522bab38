"""Bring a fleet up and keep it up: local servers as processes, boards over SSH, concurrently.

``Fleet.up()`` returns a ``FleetResult``: one ``DeviceOutcome`` per device,
``.failed`` for the ones that did not come up. One board's failure never stops
another's bring-up, and no exception escapes for a single device; each outcome
is also handed to ``on_event`` as soon as that device is done. While
``Fleet.watch()`` runs, a server that drops (crash, board reboot, lost SSH) is
restarted with exponential backoff, and every restart says why (``restarting``)
and how it ended (``back``, or ``failed`` with the next try). State lives in
``state_dir`` (pidfiles of local servers, ``status.json`` for ``farm devices
status``, ``up.pid``); ``devices.fleet.down`` stops a fleet from another process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.fleet import launch
from devices.fleet.outcome import (
    BACK,
    FAILED,
    RESTARTING,
    UP,
    DeviceOutcome,
    EventSink,
    FleetError,
    FleetEvent,
    FleetResult,
    fingerprint_summary,
    first_line,
    fleet_state_dir,
    no_events,
)
from devices.fleet.ssh import DeviceUnreachable, ProvisionError
from devices.fleet.wheel import Wheel, build_wheel
from devices.registry import DeviceSpec, FleetSpec
from farm.errors import FarmError
from rpc.transport import parse_address

log = logging.getLogger(__name__)

__all__ = ["DeviceOutcome", "Fleet", "FleetError", "FleetEvent", "FleetResult", "fleet_state_dir"]


class _LocalServer:
    """A launcher process on this machine; its stdin pipe ties it to us."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def exit_status(self) -> int | None:
        return self.proc.poll()

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


def status_text(status: int | None) -> str:
    """``status 1``, or ``status 137 (killed by SIGKILL)``: launchers exit 128+N for signal N."""
    if status is None:
        return "no exit status"
    sig = -status if status < 0 else status - 128 if status > 128 else 0
    try:
        return f"status {status} (killed by {signal.Signals(sig).name})" if sig else f"status {status}"
    except ValueError:
        return f"status {status}"


class Fleet:
    """The devices of one ``FleetSpec``, served to one tracker."""

    def __init__(
        self, spec: FleetSpec, tracker: str, token: bytes, state_dir: Path, *,
        register_timeout: float = 180.0, backoff_cap: float = 60.0, wheel_dir: Path | None = None,
        on_event: EventSink = no_events,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.tracker = tracker
        self.tracker_addr = parse_address(tracker)
        self.token = token
        self.state_dir = fleet_state_dir(state_dir, spec)
        self.register_timeout = register_timeout
        self.backoff_cap = backoff_cap
        self.wheel_dir = wheel_dir or self.state_dir / "wheel"
        self.on_event = on_event
        self._wheel: Wheel | None = None
        self._running: dict[str, _Running] = {d.name: _Running(d) for d in spec.devices}
        self._closing = threading.Event()

    # -- bring-up ---------------------------------------------------------------
    def check_tracker(self, timeout: float = 10.0) -> None:
        """Connect and authenticate once before anything starts: a wrong address or token is
        one error for the fleet, not the same failure per device after a registration timeout."""
        from rpc.client import Client
        from rpc.errors import AuthError, RpcError

        try:
            with Client(self.tracker, self.token, timeout=timeout):
                pass
        except AuthError as e:
            raise FleetError(f"tracker {self.tracker}: {e} (is the token the tracker's?)") from None
        except (RpcError, OSError) as e:
            text = str(e) or type(e).__name__
            raise FleetError(text if self.tracker in text else f"tracker {self.tracker}: {text}") from None

    def up(self) -> FleetResult:
        self.check_tracker()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "token").write_bytes(self.token)
        os.chmod(self.state_dir / "token", 0o600)
        if any(d.remote for d in self.spec.devices):
            self._wheel = build_wheel(self.wheel_dir)
        outcomes: dict[str, DeviceOutcome] = {}
        with ThreadPoolExecutor(max_workers=min(32, len(self.spec.devices))) as pool:
            futures = [pool.submit(self._bring_up, d) for d in self.spec.devices]
            for fut in as_completed(futures):  # each device's line as soon as it is done
                o = fut.result()
                outcomes[o.name] = o
                self._emit(FleetEvent(o.name, UP if o.ok else FAILED, o.message, o.error_type))
        self._write_status()
        return FleetResult([outcomes[d.name] for d in self.spec.devices])

    def _bring_up(self, dev: DeviceSpec) -> DeviceOutcome:
        run = self._running[dev.name]
        try:
            if dev.remote:
                self._up_remote(run)
            else:
                self._up_local(run)
            fps = self._await_registration(run)
            first = fps[dev.server_names()[0]]
            outcome = DeviceOutcome(dev.name, True, fingerprint_summary(first), servers=tuple(fps), fingerprint=first)
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
                if self._closing.is_set():
                    raise ProvisionError("stopped before its servers registered")
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(want - set(seen)))
                    raise ProvisionError(
                        f"{missing} did not register with {self.tracker} in {self.register_timeout:.0f} s"
                    )
                time.sleep(0.25)

    # -- supervision ------------------------------------------------------------
    def watch(self, stop: threading.Event, poll: float = 1.0) -> None:
        """Until ``stop`` is set: restart devices whose servers dropped, with backoff, several at once."""
        pending: dict[Future[DeviceOutcome], _Running] = {}
        with ThreadPoolExecutor(max_workers=min(32, len(self._running))) as pool:
            try:
                while not stop.wait(poll):
                    self._finish_restarts(pending, wait=False)
                    busy = set(map(id, pending.values()))
                    for run in self._running.values():
                        if id(run) in busy or time.monotonic() < run.next_try:
                            continue
                        reason = self._drop_reason(run)
                        if reason is None:
                            continue
                        run.failures += 1
                        log.warning("%s: restarting (attempt %d): %s", run.spec.name, run.failures, reason)
                        self._emit(FleetEvent(run.spec.name, RESTARTING, reason, attempt=run.failures))
                        pending[pool.submit(self._restart, run)] = run
            finally:
                self._closing.set()  # restarts in flight stop waiting for their registration
                self._finish_restarts(pending, wait=True)

    def _drop_reason(self, run: _Running) -> str | None:
        """Why ``run`` needs a restart, in words; None while it serves."""
        if run.outcome is None:
            return None  # closed, or never brought up
        if not run.outcome.ok:
            return f"the last attempt failed: {first_line(run.outcome.message)}"
        if run.board is not None and not run.board.conn.is_active():
            return f"SSH connection to {run.board.conn.where} lost"
        for srv in run.servers:
            if srv.exited():
                status = srv.exit_status()
                why = f"device server {srv.name} exited with {status_text(status)}"
                if status is not None and 0 < status <= 128:  # it failed on its own: its last words say why
                    last = first_line("\n".join(self._server_log(run, srv).splitlines()[-1:]))
                    why += f"; its log ends: {last}" if last else ""
                return why
        return None

    @staticmethod
    def _server_log(run: _Running, srv: Any) -> str:
        if run.board is None:
            return str(srv.tail())
        return str(run.board.log_tail(srv, lines=1)) if run.board.conn.is_active() else ""

    def _restart(self, run: _Running) -> DeviceOutcome:
        self._teardown(run)
        return self._bring_up(run.spec)

    def _finish_restarts(self, pending: dict[Future[DeviceOutcome], _Running], wait: bool) -> None:
        done = list(pending) if wait else [f for f in pending if f.done()]
        for fut in done:
            run = pending.pop(fut)
            o = fut.result()
            if o.ok:
                self._emit(FleetEvent(o.name, BACK, o.message, attempt=run.failures))
                run.failures = 0
            else:
                delay = min(self.backoff_cap, 2.0 ** min(run.failures, 10))
                run.next_try = time.monotonic() + delay
                self._emit(FleetEvent(o.name, FAILED, o.message, o.error_type, attempt=run.failures,
                                      retry_in=0.0 if self._closing.is_set() else delay))
        if done:
            self._write_status()

    def _emit(self, event: FleetEvent) -> None:
        self.on_event(event)

    # -- teardown ---------------------------------------------------------------
    def _teardown(self, run: _Running, final: bool = False) -> None:
        for srv in run.servers:
            if isinstance(srv, _LocalServer):
                srv.stop()
        if run.board is not None:
            try:
                if run.board.conn.is_active():
                    run.board.stop_servers()
                    if final:  # the token lets its holder run code on every device: leave none behind
                        run.board.remove_token()
            except (DeviceUnreachable, ProvisionError) as e:
                log.warning("%s: stopping servers: %s", run.spec.name, e)
            run.board.conn.close()  # closing the channels also ends any launcher left
            run.board = None
        run.servers = []

    def close(self) -> None:
        """Stop every server, remove the token from each board and from here, write the final status."""
        self._closing.set()
        with ThreadPoolExecutor(max_workers=min(32, len(self._running))) as pool:
            list(pool.map(lambda r: self._teardown(r, final=True), self._running.values()))
        for run in self._running.values():
            run.outcome = None
        (self.state_dir / "token").unlink(missing_ok=True)
        if self.state_dir.is_dir():
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
