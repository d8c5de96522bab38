"""A real tracker process on 127.0.0.1 (port 0) for device tests."""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from . import procs

REPO_ROOT = Path(__file__).resolve().parents[2]
_START = (
    "import argparse, logging, sys\n"
    "from rpc import cli\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "p = argparse.ArgumentParser(); cli.register(p.add_subparsers(dest='command'))\n"
    "a = p.parse_args(['tracker', '--port', '0'] + sys.argv[1:]); sys.exit(a.func(a))\n"
)


class TrackerProcess:
    """``farm tracker --port 0`` as a child; ``.address`` is ``127.0.0.1:PORT``."""

    def __init__(self, workdir: Path, token: bytes | None = None, heartbeat: float = 1.0) -> None:
        self.token = token or secrets.token_hex(16).encode()
        self.workdir = Path(workdir)
        self.heartbeat = heartbeat
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 30.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FARM_TOKEN=self.token.decode(), PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _START, "--heartbeat", str(self.heartbeat)],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "tracker.log", "ab"), text=True, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on (\S+):(\d+)", line)
            if m:
                self.address = f"127.0.0.1:{m.group(2)}"
                return self.address
        self.close()
        raise RuntimeError(f"tracker did not start: {(self.workdir / 'tracker.log').read_text()[-2000:]}")

    def close(self) -> None:
        if self.proc is None:
            return
        procs.kill_all([self.proc.pid, *procs.descendants(self.proc.pid)])
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> TrackerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
