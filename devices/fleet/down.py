"""Stop a fleet from any process (``farm devices down``), and read what each fleet last reported.

``down`` first counts the servers that run (pidfiles here and on each board), then stops the
``up`` process that supervises them, then whatever is left, and removes the token from every
board: its line says how many servers it stopped, counting those ``up`` stopped on its way out.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devices.fleet import launch
from devices.fleet.outcome import DeviceOutcome, FleetResult, fleet_state_dir
from devices.fleet.ssh import DeviceUnreachable, ProvisionError
from devices.registry import DeviceSpec, FleetSpec

log = logging.getLogger(__name__)


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
    # launch.alive, not /proc/PID: an up process whose parent has not reaped it yet is done all the same.
    while time.monotonic() < deadline and launch.alive(pid):
        time.sleep(0.1)
    return pid


def _names(entries: list[dict[str, Any]]) -> set[str]:
    """Server names (pidfile stems) of the entries that had a live process."""
    return {Path(str(e["pidfile"])).stem for e in entries if e.get("pids")}


def _stopped(n: int) -> str:
    return f"stopped {n} server(s)" if n else "no server was running"


class _BoardDown:
    """One board's part of ``down``: count, stop, remove the token; errors become its outcome."""

    def __init__(self, dev: DeviceSpec) -> None:
        self.dev = dev
        self.board: Any = None
        self.before: set[str] = set()
        self.error: DeviceOutcome | None = None

    def count(self) -> None:
        from devices.fleet.remote import Board  # paramiko is only needed for boards

        try:
            self.board = Board(self.dev)
            self.before = _names(self.board.running_servers())
        except (DeviceUnreachable, ProvisionError) as e:
            self.error = DeviceOutcome(self.dev.name, False, str(e), type(e).__name__)

    def stop(self, grace: float) -> DeviceOutcome:
        if self.error is not None or self.board is None:
            self._close()
            return self.error or DeviceOutcome(self.dev.name, False, "not reached", "DeviceUnreachable")
        try:
            stopped = _names(self.board.stop_servers(grace))
            self.board.remove_token()
            return DeviceOutcome(self.dev.name, True, _stopped(len(self.before | stopped)) + "; token removed")
        except (DeviceUnreachable, ProvisionError) as e:
            return DeviceOutcome(self.dev.name, False, str(e), type(e).__name__)
        finally:
            self._close()

    def _close(self) -> None:
        if self.board is not None:
            self.board.conn.close()


def down(spec: FleetSpec, state_root: Path, grace: float = 5.0) -> FleetResult:
    """Stop this fleet everywhere: the ``up`` process, local servers, then each board."""
    state = fleet_state_dir(state_root, spec)
    run_glob = str(state / "run" / "*.pid")
    boards = {d.name: _BoardDown(d) for d in spec.devices if d.remote}
    workers = min(32, len(spec.devices))
    # Count first: the up process stops its servers (and removes their pidfiles) on its way out.
    local_before = _names(launch.running(run_glob))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_BoardDown.count, boards.values()))
    stop_up_process(state)
    local_stopped = _names(launch.stop(run_glob, grace)) if (state / "run").is_dir() else set()
    (state / "token").unlink(missing_ok=True)

    def one(dev: DeviceSpec) -> DeviceOutcome:
        if dev.remote:
            return boards[dev.name].stop(grace)
        names = set(dev.server_names())
        return DeviceOutcome(dev.name, True, _stopped(len((local_before | local_stopped) & names)))

    with ThreadPoolExecutor(max_workers=workers) as pool:
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
