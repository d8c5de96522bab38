"""A real campaign under fire: `farm tune --tracker` against process device servers while
device servers are SIGKILLed (some restarted), the tracker is killed and restarted on
its port, a device's connection is cut mid-upload, one device is slow, and candidates
segfault, hang or write out of bounds (``tests.chaos.chaos_backend``).

Used by tests/chaos and benchmarks/bench_reliability.py. Everything is on
127.0.0.1 with ports picked by the kernel; every process started here carries
the farm's marker and is accounted for at the end.
"""
from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.rpc.harness import ROOT, LocalFarm, Proc
from tests.support.chaosproxy import CuttingProxy
from tests.support.procs import wait_gone

log = logging.getLogger(__name__)

CHAOS_KIND = "tests.chaos.chaos_backend:ChaosBackend"
KEY = "chaos"
FAULT_RATES = "segfault:0.10,oob:0.08,hang:0.05"
WORKLOADS = (("matmul", (32, 32, 32)), ("matmul", (24, 40, 16)))


@dataclass
class ChaosReport:
    trials_planned: int
    trials_logged: int
    lost: int
    duplicated: int
    events: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    returncode: int | None = None
    hung: bool = False
    wall_s: float = 0.0
    leaked: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def faults_injected(self) -> int:
        """Process/network faults plus candidates that crashed or hung on purpose."""
        return sum(self.events.values()) + self.outcomes["RUNTIME_ERROR"] + self.outcomes["RUN_TIMEOUT"]


def campaign_yaml(log_path: Path, trials: int, seed: int) -> str:
    wl = "\n".join(f"  - {{name: {n}, shape: [{', '.join(map(str, s))}]}}" for n, s in WORKLOADS)
    return (f"name: chaos\nlog: {log_path}\ndevice_keys: [{KEY}]\ntuner: random\ntrials: {trials}\n"
            f"batch_size: 4\nseed: {seed}\ntransfer: false\nbuild_timeout_s: 120\n"
            "timing: {repeat: 2, min_repeat_ms: 1, timeout_s: 2}\n"
            f"workloads:\n{wl}\n")


class ChaosCampaign:
    """Owns the farm, the proxy and the `farm tune` process of one chaos run."""

    def __init__(self, workdir: Path, *, trials: int = 16, seed: int = 0, servers: int = 4,
                 deadline_s: float = 420.0) -> None:
        self.workdir = workdir
        self.trials, self.seed, self.n_servers = trials, seed, servers
        self.deadline_s = deadline_s
        self.rng = random.Random(seed)
        self.farm = LocalFarm(workdir / "farm", heartbeat=0.5, frame_timeout=5.0)
        self.proxy: CuttingProxy | None = None
        self.servers: list[Proc] = []
        self.events: Counter[str] = Counter()
        self.port = 0

    # ---- processes -----------------------------------------------------------------
    def _serve(self, name: str, tracker: str, slow_s: float = 0.0) -> Proc:
        extra = {"KF_CHAOS_FAULTS": FAULT_RATES, "KF_CHAOS_SLOW_S": str(slow_s)}
        args = ["serve", "--tracker", tracker, "--key", KEY, "--kind", CHAOS_KIND, "--name", name,
                "--load-grace", "1", "--backoff-cap", "0.5"]
        old = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)  # LocalFarm.env() copies os.environ for the child
        try:
            proc = self.farm._spawn(args, f"serve-{name}")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        proc.what = name
        self.servers.append(proc)
        return proc

    def start(self) -> None:
        self.farm.start_tracker()
        self.port = int(self.farm.address.rsplit(":", 1)[1])
        self.proxy = CuttingProxy(self.farm.address)
        self.proxy.start()
        self._serve("via-proxy", self.proxy.address)
        self._serve("slow", self.farm.address, slow_s=0.3)
        for n in range(2, self.n_servers):
            self._serve(f"plain-{n}", self.farm.address)
        with self.farm.client() as c:
            self.farm.wait_devices(c, self.n_servers, KEY, timeout=90)

    def close(self) -> list[int]:
        if self.proxy is not None:
            self.proxy.close()
        leaked = self.farm.close()
        return leaked + wait_gone(self.farm.marker, timeout=30)

    # ---- faults --------------------------------------------------------------------
    def _live_servers(self) -> list[Proc]:
        return [p for p in self.servers if p.alive() and p.what != "via-proxy"]

    def kill_device(self, restart: bool) -> None:
        live = self._live_servers()
        if len(live) <= 1:
            return
        victim = self.rng.choice(live)
        victim.kill9()
        self.events["device_sigkill"] += 1
        if restart:
            time.sleep(self.rng.uniform(0.2, 1.5))
            self._serve(f"{victim.what.split('~')[0]}~{self.events['device_sigkill']}", self.farm.address,
                        slow_s=0.3 if victim.what.startswith("slow") else 0.0)
            self.events["device_restart"] += 1

    def kill_tracker(self) -> None:
        assert self.farm.tracker is not None
        self.farm.tracker.kill9()
        self.events["tracker_sigkill"] += 1
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.farm.start_tracker(self.port)  # same port: devices and the driver re-dial it
        self.events["tracker_restart"] += 1

    def cut_upload(self) -> None:
        assert self.proxy is not None
        if not self.proxy.armed:
            self.proxy.cut_next_upload()
            self.events["upload_cut_armed"] += 1

    # ---- the run -------------------------------------------------------------------
    def run(self) -> ChaosReport:
        log_path = self.workdir / "chaos.jsonl"
        cfg = self.workdir / "chaos.yaml"
        cfg.write_text(campaign_yaml(log_path, self.trials, self.seed))
        env = self.farm.env()
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        t0 = time.monotonic()
        hung = False
        with open(self.workdir / "tune.out", "wb") as out, open(self.workdir / "tune.err", "wb") as err:
            tune = subprocess.Popen(
                [sys.executable, "-m", "farm.cli", "tune", str(cfg), "--tracker", self.farm.address, "--build-cpus",
                 "1", "--max-outage", "120", "--no-progress", "--json"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            try:
                self._fire(tune, log_path, t0)
                try:
                    tune.wait(max(1.0, self.deadline_s - (time.monotonic() - t0)))
                except subprocess.TimeoutExpired:
                    hung = True
            finally:
                if tune.poll() is None:
                    tune.kill()
                    tune.wait(10)
        report = self._report(log_path, tune.returncode, hung, time.monotonic() - t0)
        if self.proxy is not None:
            self.events["upload_cut"] = self.proxy.cuts
        self.events.pop("upload_cut_armed", None)
        report.events = Counter(self.events)
        return report

    def _fire(self, tune: subprocess.Popen[bytes], log_path: Path, t0: float) -> None:
        """Faults at random moments, spread over the campaign by its progress (records in the log),
        so a fast campaign still takes every fault mid-run."""
        # The tracker restart first, then one of each other kind, then the rest shuffled.
        rest = ["device", "upload_cut", "device_restart", "tracker", "device_restart"]
        self.rng.shuffle(rest)
        plan = ["tracker", "upload_cut", "device_restart", *rest]
        planned = self.trials * len(WORKLOADS)
        for k, what in enumerate(plan):
            milestone = planned * (k + 0.5) / (len(plan) + 1)
            while self._logged(log_path) < milestone:
                if tune.poll() is not None or time.monotonic() - t0 > self.deadline_s:
                    return
                time.sleep(0.05)
            time.sleep(self.rng.uniform(0.0, 0.5))
            if tune.poll() is not None:
                return
            log.info("chaos: %s", what)
            if what == "tracker":
                self.kill_tracker()
            elif what == "upload_cut":
                self.cut_upload()
            else:
                self.kill_device(restart=what == "device_restart")

    @staticmethod
    def _logged(log_path: Path) -> int:
        try:
            return log_path.read_bytes().count(b"\n")
        except OSError:
            return 0

    def _report(self, log_path: Path, rc: int | None, hung: bool, wall: float) -> ChaosReport:
        recs = []
        if log_path.exists():
            for line in log_path.read_text().splitlines():
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass  # a torn line: counted as lost below
        keys = Counter((r["workload"]["name"], tuple(r["workload"]["args"]), r["device"]["key"], r["config"]["index"])
                       for r in recs)
        per_task = Counter(k[:3] for k in keys)
        planned = self.trials * len(WORKLOADS)
        lost = sum(max(0, self.trials - per_task[(n, s, KEY)]) for n, s in WORKLOADS)
        stdout = (self.workdir / "tune.out").read_text(errors="replace").strip().splitlines()
        summary: dict[str, Any] = {}
        if stdout:
            try:
                summary = json.loads(stdout[-1])
            except ValueError:
                pass
        return ChaosReport(
            trials_planned=planned, trials_logged=len(recs), lost=lost, duplicated=len(recs) - len(keys),
            outcomes=Counter(r["result"]["outcome"] for r in recs), returncode=rc, hung=hung, wall_s=wall,
            summary=summary, records=recs,
            stderr_tail=(self.workdir / "tune.err").read_text(errors="replace")[-4000:])


def run_chaos(workdir: Path, **kw: Any) -> ChaosReport:
    """Start, run, stop; the report carries the leaked pids (must be empty)."""
    c = ChaosCampaign(workdir, **kw)
    try:
        c.start()
        report = c.run()
    finally:
        leaked = c.close()
    report.leaked = leaked
    return report
