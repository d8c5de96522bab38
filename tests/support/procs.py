"""Process bookkeeping for tests: find, reap and assert on processes by /proc.

Tests that start servers (sshd, device servers, qemu guests) must leave nothing
behind. Processes that daemonize escape a parent's process group, so these
helpers look them up by a marker string in their command line or environment.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def is_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first-level and below)."""
    children: dict[int, list[int]] = {}
    for p in all_pids():
        pp = _ppid(p)
        if pp is not None:
            children.setdefault(pp, []).append(p)
    out: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def find_marked(marker: str) -> list[int]:
    """Live (non-zombie) processes whose argv or environment contains ``marker``."""
    needle = marker.encode()
    me = os.getpid()
    found = []
    for p in all_pids():
        if p == me or _is_zombie(p):
            continue
        if needle in _read(f"/proc/{p}/cmdline") or needle in _read(f"/proc/{p}/environ"):
            found.append(p)
    return found


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def describe(pids: list[int]) -> str:
    return "; ".join(f"{p}: {cmdline(p)[:200]}" for p in pids)


def kill_all(pids: list[int], *, grace: float = 3.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if is_alive(p)]
            if not pids:
                return
            time.sleep(0.05)


def wait_gone(marker: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process carries ``marker``; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = find_marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = find_marked(marker)
    return left
