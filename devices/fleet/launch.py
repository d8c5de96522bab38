"""Supervise one device server on a board: ``python -m devices.fleet.launch``.

``farm devices up`` runs this over SSH (and locally for local devices) with
the server's arguments after ``--``. It starts ``farm serve`` in its own
session, records both pids in ``--pidfile`` and prints them as one JSON line.
It stops the server when its stdin closes (the SSH connection or the ``up``
process is gone, so the tunnel is too), on SIGTERM/SIGHUP/SIGINT, and exits
with the server's status if the server dies on its own. ``--stop GLOB`` is
what ``farm devices down`` runs: it stops whatever those pidfiles name (``--list GLOB``
only reports which of them still run).

Only the standard library and ``rpc`` are imported: this runs on the board.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)
MARKER = "devices.fleet.launch"


def _serve(args: list[str]) -> int:
    # Only rpc's commands: farm.cli would import every command group (and their deps).
    from rpc import cli as rpc_cli

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="farm")
    rpc_cli.register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["serve", *args])
    return int(ns.func(ns) or 0)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ours(pid: int) -> bool:
    """True when ``pid`` still runs this module (pids are reused after a reboot)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return MARKER.encode() in fh.read()
    except OSError:
        return False


def _kill_group(pgid: int, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive(pgid):
            time.sleep(0.05)
        if not alive(pgid):
            return


def _pids(path: str) -> tuple[int, int]:
    """(launcher, server) from a pidfile; zeros when it is unreadable."""
    try:
        with open(path) as fh:
            launcher, server = (int(x) for x in fh.read().split()[:2])
    except (OSError, ValueError):
        return 0, 0
    return launcher, server


def _live(launcher: int, server: int) -> list[int]:
    return [p for p in (launcher, server) if p > 0 and alive(p) and _ours(p)]


def running(pattern: str) -> list[dict[str, object]]:
    """The pidfiles matching ``pattern`` whose launcher or server still runs (``farm devices down``
    counts them before the ``up`` process stops its servers and removes their pidfiles)."""
    out = []
    for path in sorted(glob.glob(pattern)):
        found = _live(*_pids(path))
        if found:
            out.append({"pidfile": path, "pids": found})
    return out


def stop(pattern: str, grace: float = 5.0) -> list[dict[str, object]]:
    """Stop every launcher and server named by pidfiles matching ``pattern``."""
    stopped = []
    for path in sorted(glob.glob(pattern)):
        launcher, server = _pids(path)
        found = _live(launcher, server)
        if launcher in found:
            os.kill(launcher, signal.SIGTERM)  # it stops its server itself
            deadline = time.monotonic() + grace + 1
            while time.monotonic() < deadline and alive(launcher):
                time.sleep(0.05)
        if server in found or (server > 0 and alive(server) and _ours(server)):
            _kill_group(server, grace)
        if launcher > 0 and alive(launcher) and _ours(launcher):
            os.kill(launcher, signal.SIGKILL)
        try:
            os.unlink(path)
        except OSError:
            pass
        stopped.append({"pidfile": path, "pids": found})
    return stopped


def supervise(pidfile: str, logfile: str, serve_args: list[str], grace: float = 5.0) -> int:
    os.makedirs(os.path.dirname(pidfile) or ".", exist_ok=True)
    os.makedirs(os.path.dirname(logfile) or ".", exist_ok=True)
    with open(logfile, "ab") as logfh:
        child = subprocess.Popen(
            [sys.executable, "-m", MARKER, "--serve", *serve_args],
            stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    with open(pidfile, "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}\n")
    print(json.dumps({"launcher": os.getpid(), "server": child.pid}), flush=True)
    done = threading.Event()

    def watch_stdin() -> None:
        # Raw reads on fd 0: a daemon thread blocked in the buffered reader aborts shutdown.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.is_set() and child.poll() is None:
        done.wait(0.2)
    status = child.poll()
    if status is None:
        _kill_group(child.pid, grace)
        child.wait()
        status = 0
    elif status < 0:
        status = 128 - status  # killed by signal N: exit 128+N as a shell does, not (256-N) by accident
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        return _serve(argv[1:])
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(prog="python -m devices.fleet.launch")
    ap.add_argument("--pidfile")
    ap.add_argument("--log")
    ap.add_argument("--stop", metavar="GLOB", help="stop what matching pidfiles name, print JSON")
    ap.add_argument("--list", metavar="GLOB", help="print (JSON) the matching pidfiles whose processes run")
    ap.add_argument("--grace", type=float, default=5.0)
    ns = ap.parse_args(argv)
    if ns.stop:
        print(json.dumps(stop(ns.stop, ns.grace)), flush=True)
        return 0
    if ns.list:
        print(json.dumps(running(ns.list)), flush=True)
        return 0
    if not ns.pidfile or not ns.log:
        ap.error("--pidfile and --log are required to launch")
    return supervise(ns.pidfile, ns.log, rest, ns.grace)


if __name__ == "__main__":
    sys.exit(main())
