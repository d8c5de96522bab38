"""``farm devices``: check a devices file; bring a fleet up, down, and show its state.

Only ``check`` is needed on a machine without paramiko: the fleet modules are
imported inside their handlers.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from devices.registry import DeviceSpec, FleetSpec, load_fleet
from farm.cli.args import tracker_address


def _where(dev: DeviceSpec) -> str:
    if dev.ssh is None:
        return "this machine"
    return dev.ssh.display


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def fleet_table(fleet: FleetSpec) -> str:
    rows = [["NAME", "KEY", "KIND", "WHERE", "SERVERS", "TARGET"]]
    for d in fleet.devices:
        rows.append([d.name, d.key, d.kind, _where(d), str(d.servers), str(d.target)])
    return _table(rows)


def cmd_check(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.file)  # a DeviceConfigError names file:line; the CLI boundary prints it
    print(fleet_table(fleet))
    keys = sorted({d.key for d in fleet.devices})
    print(f"\n{len(fleet.devices)} devices, {len(keys)} keys ({', '.join(keys)}): OK")
    return 0


def _state_root(args: argparse.Namespace) -> Path:
    # The CLI is the edge where the environment is read (STYLE: config layering).
    raw = args.state_dir or os.environ.get("KF_STATE_DIR") or "~/.kernelfarm/fleet"
    return Path(os.path.expanduser(raw))


def _line(name: str, verb: str, text: str) -> str:
    """One device's line: ``NAME  VERB  text``, a long message's further lines indented below."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([f"{name:20} {verb:8} {first}".rstrip(), *(f"{'':30}{line}" for line in rest)])


def _outcome_line(name: str, ok: bool, verb: str, message: str, error_type: str) -> str:
    return _line(name, verb if ok else "FAILED", message if ok else f"{error_type}: {message}")


def _print_outcomes(result: Any, verb: str) -> None:
    for name, o in result.items():
        print(_outcome_line(name, o.ok, verb, o.message, o.error_type), flush=True)


class _EventPrinter:
    """Prints each fleet event the moment it happens (bring-up threads finish in any order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, ev: Any) -> None:
        from devices.fleet.outcome import BACK, FAILED, RESTARTING

        if ev.kind == RESTARTING:
            text = _line(ev.name, "restart", f"attempt {ev.attempt}: {ev.message}")
        elif ev.kind == BACK:
            text = _line(ev.name, "back", f"{ev.message} (after {ev.attempt} attempt(s))")
        elif ev.kind == FAILED and ev.attempt:
            again = f"; next try in {ev.retry_in:.0f} s" if ev.retry_in else ""
            text = _line(ev.name, "FAILED", f"attempt {ev.attempt}{again}: {ev.error_type}: {ev.message}")
        else:
            text = _outcome_line(ev.name, ev.kind != FAILED, ev.kind, ev.message, ev.error_type)
        with self._lock:
            print(text, flush=True)


def _summary(result: Any, once: bool, interrupted: bool, file: str) -> str:
    n_ok, n = len(result) - len(result.failed), len(result)
    head = f"{n_ok}/{n} devices up"
    if once:
        return f"{head}; --once: stopping {'them' if n_ok else 'and exiting'}"
    if interrupted:
        return f"{head}; interrupted: stopping"
    retry = "retrying the failed ones" if result.failed else ""
    if not n_ok:
        return f"{head}; {retry} until interrupted (farm devices down {file})"
    return f"{head}; serving{' and ' + retry if retry else ''} until interrupted (farm devices down {file})"


def cmd_up(args: argparse.Namespace) -> int:
    from devices.fleet.supervisor import Fleet, fleet_state_dir
    from rpc.auth import load_token

    fleet_spec = load_fleet(args.file)
    token = load_token(args.token_file)
    fleet = Fleet(fleet_spec, args.tracker, token, _state_root(args), register_timeout=args.register_timeout,
                  on_event=_EventPrinter())
    state = fleet_state_dir(_state_root(args), fleet_spec)
    state.mkdir(parents=True, exist_ok=True)
    (state / "up.pid").write_text(f"{os.getpid()}\n")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        result = fleet.up()
        print(_summary(result, args.once, stop.is_set(), args.file), flush=True)
        if not args.once:
            fleet.watch(stop)
    finally:
        fleet.close()
        (state / "up.pid").unlink(missing_ok=True)
    return 0 if result.ok else 1


def cmd_down(args: argparse.Namespace) -> int:
    from devices.fleet.down import down

    result = down(load_fleet(args.file), _state_root(args), grace=args.grace)
    _print_outcomes(result, "down")
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from devices.fleet.down import statuses

    found = statuses(_state_root(args))
    if not found:
        print(f"no fleet has been brought up (state dir: {_state_root(args)})")
        return 0
    for data in found:
        state = "running" if data["running"] else "stopped"
        print(f"{data['file']} -> {data['tracker']}: {state} (pid {data['pid']})")
        rows = [["DEVICE", "STATE", "DETAIL"]]
        for name, d in data["devices"].items():
            ok = d.get("ok") and data["running"]
            rows.append(
                [
                    name,
                    "up" if ok else ("failed" if d.get("error_type") else "down"),
                    d.get("message", "").splitlines()[0] if d.get("message") else "",
                ]
            )
        print(_table(rows) + "\n")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("devices", help="register and manage the device fleet (devices.yaml)")
    sub = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate a devices file and print its devices")
    c.add_argument("file", help="devices.yaml")
    c.set_defaults(func=cmd_check)

    u = sub.add_parser("up", help="start device servers on every device; stays up and restarts dropped ones")
    u.add_argument("file", help="devices.yaml")
    u.add_argument("--tracker", required=True, metavar="HOST:PORT", type=tracker_address,
                   help="tracker address, as seen from here")
    u.add_argument("--token-file", help="file holding the shared token (default: $FARM_TOKEN)")
    u.add_argument("--register-timeout", type=float, default=180.0, help="seconds a device has to register")
    u.add_argument("--once", action="store_true", help="bring up, report, then stop everything and exit")
    d = sub.add_parser("down", help="stop every device server of a devices file, here and on the boards, "
                       "and remove the token from the boards")
    d.add_argument("file", help="devices.yaml")
    d.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    s = sub.add_parser("status", help="show the fleets brought up from this machine")
    for q in (u, d, s):
        q.add_argument("--state-dir", help="where up keeps its state (default $KF_STATE_DIR or ~/.kernelfarm/fleet)")
    u.set_defaults(func=cmd_up)
    d.set_defaults(func=cmd_down)
    s.set_defaults(func=cmd_status)
