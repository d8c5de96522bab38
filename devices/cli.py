"""``farm devices``: check a devices file; bring a fleet up, down, and show its state.

Only ``check`` is needed on a machine without paramiko: the fleet modules are
imported inside their handlers.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .registry import DeviceConfigError, DeviceSpec, FleetSpec, load_fleet


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
    try:
        fleet = load_fleet(args.file)
    except DeviceConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(fleet_table(fleet))
    keys = sorted({d.key for d in fleet.devices})
    print(f"\n{len(fleet.devices)} devices, {len(keys)} keys ({', '.join(keys)}): OK")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("devices", help="register and manage the device fleet (devices.yaml)")
    sub = p.add_subparsers(dest="devices_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    c = sub.add_parser("check", help="validate a devices file and print its devices")
    c.add_argument("file", help="devices.yaml")
    c.set_defaults(func=cmd_check)
