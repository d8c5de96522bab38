"""Bad `farm` invocations, one per way a user gets a command wrong, and a runner for them.

Each ``Case`` is run as a real subprocess (``python -m farm.cli``) and must end with exactly
one ``farm <cmd>: error: ...`` line (or argparse's usage error) and the documented exit
code, never a Python traceback. None of them may start Ray: every one fails on its input
first. ``tests/test_cli_errors.py`` asserts on the outcomes; ``benchmarks/bench_reliability.py``
reports ``cli_tracebacks()``.

Placeholders in an argv: ``{dir}`` the scratch directory (files made by ``make_files``),
``{tracker}`` the address of a real tracker started for the run, ``{campaign}`` the quickstart
campaign. ``token`` is what FARM_TOKEN holds: ``none``, ``good`` (the tracker's) or ``wrong``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .tracker import REPO_ROOT, TrackerProcess

CAMPAIGN = str(REPO_ROOT / "configs/campaigns/quickstart.yaml")
USAGE, FAILURE = 2, 1
ERROR_LINE = re.compile(r"^farm( [\w-]+)*: error: \S")


@dataclass(frozen=True)
class Case:
    """One bad invocation: the arguments after ``farm``, the exit code it must give, and why it is bad."""

    argv: tuple[str, ...]
    code: int
    why: str
    token: str = "good"

    @property
    def needs_tracker(self) -> bool:
        return any("{tracker}" in a for a in self.argv)

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""


def _c(line: str, code: int, why: str, token: str = "good") -> Case:
    import shlex

    return Case(tuple(shlex.split(line)), code, why, token)


CASES: tuple[Case, ...] = (
    # the command itself
    _c("", USAGE, "no command"),
    _c("nosuch", USAGE, "unknown command"),
    _c("--bogus workloads", USAGE, "unknown global option"),
    # tune: everything is checked before Ray starts
    _c("tune", USAGE, "no campaign file"),
    _c("tune {dir}/missing.yaml", FAILURE, "campaign file missing"),
    _c("tune {dir}/bad-campaign.yaml", FAILURE, "campaign names an unknown workload"),
    _c("tune {dir}/not-yaml.yaml", FAILURE, "campaign is not YAML"),
    _c("tune {campaign} --trials many", USAGE, "--trials not a number"),
    _c("tune {campaign} --log tracker", USAGE, "the shared log needs --tracker"),
    _c("tune {campaign} --tracker 127.0.0.1:notaport", USAGE, "tracker port not a number"),
    _c("tune {campaign} --tracker 127.0.0.1:1", FAILURE, "no FARM_TOKEN", token="none"),
    _c("tune {campaign} --tracker 127.0.0.1:1 --token-file {dir}/missing-token", FAILURE, "token file missing"),
    _c("tune {campaign} --tracker 127.0.0.1:1 --token-file {dir}/empty-token", FAILURE, "token file empty"),
    _c("tune {campaign} --tracker 127.0.0.1:1", FAILURE, "nothing listens at the tracker address"),
    _c("tune {campaign} --tracker {tracker}", FAILURE, "token differs from the tracker's", token="wrong"),
    # log
    _c("log", USAGE, "no log subcommand"),
    _c("log best", USAGE, "no log file"),
    _c("log best {dir}/missing.jsonl", FAILURE, "log file missing"),
    _c("log best {dir}", FAILURE, "log is a directory"),
    _c("log best {dir}/empty.jsonl", FAILURE, "no record in the log"),
    _c("log best {dir}/small.jsonl --all --device nosuch", FAILURE, "no record matches"),
    _c("log show {dir}/small.jsonl --limit ten", USAGE, "--limit not a number"),
    _c("log export {dir}/small.jsonl --format csv", USAGE, "unknown export format"),
    _c("log export {dir}/small.jsonl --format tvm -o {dir}/no/such/dir/out.json", FAILURE, "output dir missing"),
    # export and plot
    _c("export {dir}/small.jsonl", USAGE, "no --workload / -o"),
    _c("export {dir}/missing.jsonl --workload matmul -o {dir}/out", FAILURE, "log file missing"),
    _c("export {dir}/small.jsonl --workload nosuch -o {dir}/out", FAILURE, "no record of that workload"),
    _c("export {dir}/small.jsonl --workload matmul --shape 1,big -o {dir}/out", USAGE, "shape not integers"),
    _c("plot {dir}/missing.jsonl -o {dir}/p.png", FAILURE, "log file missing"),
    _c("plot {dir}/small.jsonl -o {dir}/p.png --yscale cubic", USAGE, "unknown y scale"),
    _c("plot {dir}/small.jsonl -o {dir}/p.png --workload nosuch", FAILURE, "nothing to plot"),
    # the compiler: show, run, workloads
    _c("show matmul", USAGE, "no --shape"),
    _c("show nosuch --shape 1,2,3", FAILURE, "unknown workload"),
    _c("show matmul --shape 64,big,64", USAGE, "shape not integers"),
    _c("show matmul --shape 64,64", FAILURE, "shape has the wrong arity"),
    _c("show matmul --shape 64,64,64 --config {{bad", FAILURE, "config not JSON"),
    _c("show matmul --shape 64,64,64 --config 999999999", FAILURE, "config index out of range"),
    _c("show matmul --shape 64,64,64 --config best", USAGE, "--config best without --log"),
    _c("show matmul --shape 64,64,64 --config best --log {dir}/empty.jsonl", FAILURE, "no best in the log"),
    _c("show matmul --shape 64,64,64 --target 'llvm -mtriple=bogus-none-none'", FAILURE, "unknown target"),
    _c("run matmul --shape 64,64,64 --repeat often", USAGE, "--repeat not a number"),
    _c("run matmul --shape 64,64,64 --target 'llvm -mtriple=aarch64-linux-gnu'", USAGE, "target does not run here"),
    _c("workloads --target 'nosuch -mcpu=x'", FAILURE, "unknown target kind"),
    # query and measure: a client of a tracker
    _c("query", USAGE, "no --tracker"),
    _c("query --tracker 127.0.0.1:1", FAILURE, "no FARM_TOKEN", token="none"),
    _c("query --tracker 127.0.0.1:1 --token-file {dir}/missing-token", FAILURE, "token file missing"),
    _c("query --tracker 127.0.0.1:notaport", FAILURE, "tracker port not a number"),
    _c("query --tracker 127.0.0.1:1", FAILURE, "nothing listens at the tracker address"),
    _c("query --tracker {tracker}", FAILURE, "token differs from the tracker's", token="wrong"),
    _c("measure --tracker 127.0.0.1:1 matmul --shape 64,64,64", USAGE, "no --key"),
    _c("measure --tracker 127.0.0.1:1 --key x86 matmul --shape 64,64,64", FAILURE, "no FARM_TOKEN", token="none"),
    _c("measure --tracker 127.0.0.1:1 --key x86 matmul --shape 64,big", FAILURE, "shape not integers"),
    _c("measure --tracker {tracker} --key nosuch matmul --shape 64,64,64", FAILURE, "no device under that key"),
    # tracker and serve
    _c("tracker --port high", USAGE, "--port not a number"),
    _c("tracker --port 0", FAILURE, "no FARM_TOKEN", token="none"),
    _c("tracker --port 0 --token-file {dir}/missing-token", FAILURE, "token file missing"),
    _c("tracker --port 0 --tls-cert {dir}/missing.pem --tls-key {dir}/missing.key", FAILURE, "TLS files missing"),
    _c("tracker --ray --port 0", FAILURE, "--ray needs a fixed port"),
    _c("serve --tracker 127.0.0.1:1", USAGE, "no --key"),
    _c("serve --tracker 127.0.0.1:1 --key x86", FAILURE, "no FARM_TOKEN", token="none"),
    # devices
    _c("devices", USAGE, "no devices subcommand"),
    _c("devices check", USAGE, "no devices file"),
    _c("devices check {dir}/missing.yaml", FAILURE, "devices file missing"),
    _c("devices check {dir}/bad-devices.yaml", FAILURE, "devices file has an unknown kind"),
    _c("devices up {dir}/devices.yaml", USAGE, "no --tracker"),
    _c("devices up {dir}/bad-devices.yaml --tracker 127.0.0.1:1", FAILURE, "devices file has an unknown kind"),
    _c("devices up {dir}/devices.yaml --tracker 127.0.0.1:notaport", USAGE, "tracker port not a number"),
    _c("devices up {dir}/devices.yaml --tracker 127.0.0.1:1", FAILURE, "no FARM_TOKEN", token="none"),
    _c("devices up {dir}/devices.yaml --tracker 127.0.0.1:1", FAILURE, "nothing listens at the tracker address"),
    _c("devices up {dir}/devices.yaml --tracker {tracker}", FAILURE, "token differs from the tracker's",
       token="wrong"),
    _c("devices down {dir}/missing.yaml", FAILURE, "devices file missing"),
)


@dataclass(frozen=True)
class Outcome:
    """What one case printed and returned."""

    case: Case
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ERROR_LINE.match(line)]

    def problems(self) -> list[str]:
        """Why this outcome breaks the CLI's promise (empty: it keeps it)."""
        out = []
        if self.traceback:
            out.append("printed a traceback")
        if "internal error" in self.stderr:
            out.append("an unexpected exception (a bug) reached the CLI")
        if self.code != self.case.code:
            out.append(f"exit {self.code}, want {self.case.code}")
        if self.case.argv and len(self.error_lines) != 1:
            out.append(f"{len(self.error_lines)} 'farm <cmd>: error:' lines, want 1")
        if self.case.code == USAGE and self.case.argv and not self.stderr.startswith("usage:") \
                and "error:" not in self.stderr:
            out.append("no usage error")
        return out


def make_files(d: Path) -> None:
    """The inputs the cases name under ``{dir}``."""
    (d / "empty.jsonl").write_text("")
    (d / "empty-token").write_text("\n")
    (d / "not-yaml.yaml").write_text("name: [unclosed\n  - {\n")
    (d / "bad-campaign.yaml").write_text(
        "name: bad\ndevice_keys: [x86]\ntrials: 4\nworkloads:\n  - {name: nosuch, shape: [1, 2, 3]}\n")
    (d / "devices.yaml").write_text("devices:\n  - {name: x86, key: x86, kind: local}\n")
    (d / "bad-devices.yaml").write_text("devices:\n  - {name: x86, key: x86, kind: toaster}\n")
    write_log(d / "small.jsonl", 4)


def write_log(path: Path, n: int) -> Path:
    """A log of ``n`` successful matmul(32,32,32) records (for reading commands)."""
    from farm.log import LogRecord
    from farm.records.measure import MeasureResult, Outcome, RunOptions

    flops = 2.0 * 32**3
    lines = []
    for i in range(n):
        res = MeasureResult(Outcome.OK, (flops / (10.0 + i) / 1e9,) * 3, flops=flops, number=10, device_key="x86")
        rec = LogRecord.from_measurement(
            workload="matmul", args=(32, 32, 32), target="llvm -mtriple=x86_64-unknown-linux-gnu",
            config={"index": i, "knobs": {}}, result=res, options=RunOptions(repeat=3), device_key="x86",
            fingerprint={"isa": "x86_64"}, build_s=0.01, timestamp=1.7e9 + i)
        lines.append(json.dumps(rec.to_json()) + "\n")
    path.write_text("".join(lines))
    return path


def farm_env(token: str, tracker_token: bytes) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_TOKEN", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO_ROOT), RAY_USAGE_STATS_ENABLED="0")
    if token == "good":
        env["FARM_TOKEN"] = tracker_token.decode()
    elif token == "wrong":
        env["FARM_TOKEN"] = "not-the-tracker-token"
    return env


def run_farm(argv: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 30.0) -> tuple[int, str, str, float]:
    import time

    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "farm.cli", *argv], capture_output=True, text=True, env=env,
                           cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:  # a bad invocation that hangs is a finding, not a crash of the run
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        return -1, out, err + f"\n(timed out after {timeout:.0f} s)", time.monotonic() - t0
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t0


def run_cases(cases: Iterable[Case] = CASES, workdir: Path | None = None, jobs: int = 2) -> list[Outcome]:
    """Run every case as a subprocess (``jobs`` at a time); a tracker is started only if one needs it."""
    cases = list(cases)
    with tempfile.TemporaryDirectory(prefix="kf-cli-") as tmp:
        d = Path(workdir or tmp)
        d.mkdir(parents=True, exist_ok=True)
        make_files(d)
        tracker = TrackerProcess(d / "tracker") if any(c.needs_tracker for c in cases) else None
        try:
            if tracker is not None:
                tracker.start()
            token = tracker.token if tracker else b"kf-cli-cases-token"
            subst = {"dir": str(d), "tracker": tracker.address if tracker else "", "campaign": CAMPAIGN}

            def one(case: Case) -> Outcome:
                argv = tuple(a.format(**subst) for a in case.argv)
                code, out, err, secs = run_farm(argv, farm_env(case.token, token), d)
                return Outcome(case, argv, code, out, err, secs)

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                return list(pool.map(one, cases))
        finally:
            if tracker is not None:
                tracker.close()


def cli_tracebacks(outcomes: Iterable[Outcome] | None = None) -> int:
    """How many bad invocations printed a Python traceback (the goal: 0)."""
    return sum(o.traceback for o in (run_cases() if outcomes is None else outcomes))


if __name__ == "__main__":
    results = run_cases()
    for o in results:
        mark = "ok " if not o.problems() else "BAD"
        print(f"{mark} {o.code} {o.seconds:5.2f}s farm {' '.join(o.case.argv)}  [{o.case.why}]",
              "; ".join(o.problems()))
        if o.problems():
            print("    " + "\n    ".join((o.stderr.strip() or o.stdout.strip()).splitlines()[-4:]))
    print(f"cli_tracebacks = {cli_tracebacks(results)} of {len(results)} cases")
