"""Every `farm` subcommand fails in one clear line: `farm <cmd>: error: ...`, the documented
exit code, no Python traceback (unless -vv asks for it), nothing after a closed pipe.

The bad invocations live in ``tests/support/cli_cases.py`` (``benchmarks/bench_reliability.py``
counts their tracebacks too); each runs as a real subprocess, and none starts Ray.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from farm.cli import errors
from farm.errors import ConfigError
from rpc.errors import AuthError, KernelCrashed
from tests.support.cli_cases import CAMPAIGN, CASES, Case, Outcome, farm_env, run_cases, run_farm, write_log
from tests.support.tracker import TrackerProcess

# Every command group the parser knows must have bad invocations here.
COMMANDS = {"tune", "log", "export", "plot", "show", "run", "workloads", "query", "measure", "tracker", "serve",
            "devices"}


@pytest.fixture(scope="module")
def outcomes() -> dict[Case, Outcome]:
    """All cases, run once, two at a time (the suite's machines have two cores)."""
    return {o.case: o for o in run_cases(CASES, jobs=2)}


def test_the_cases_cover_every_command() -> None:
    from farm.cli.main import build_parser

    parser = build_parser()
    known = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert known == COMMANDS, "a new command needs bad invocations in tests/support/cli_cases.py"
    per_command = Counter(c.command for c in CASES if c.argv)
    assert set(per_command) >= COMMANDS
    assert len(CASES) >= 40
    assert len(set(CASES)) == len(CASES), "duplicate case"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{' '.join(c.argv) or '(none)'} [{c.why}]")
def test_bad_invocation_fails_in_one_line(case: Case, outcomes: dict[Case, Outcome]) -> None:
    o = outcomes[case]
    assert not o.problems(), f"farm {' '.join(o.argv)}: {'; '.join(o.problems())}\n{o.stderr}"


def test_no_case_starts_ray(outcomes: dict[Case, Outcome]) -> None:
    slow = {" ".join(o.argv): round(o.seconds, 1) for o in outcomes.values() if o.seconds > 5}
    assert not slow, f"these took long enough to have started Ray: {slow}"
    assert not [o for o in outcomes.values() if "ray:" in o.stderr]


def test_tune_checks_token_and_tracker_before_ray(tmp_path: Path) -> None:
    """The reported 7.5 s of Ray start-up before a wrong token was found: now well under a second or two."""
    with TrackerProcess(tmp_path / "tracker") as tracker:
        for token, address, want in (("none", "127.0.0.1:1", "no token"),
                                     ("wrong", tracker.address, "authentication failed")):
            code, out, err, secs = run_farm(["tune", CAMPAIGN, "--tracker", address],
                                            farm_env(token, tracker.token), tmp_path)
            lines = [x for x in err.splitlines() if x.strip()]
            assert code == 1 and len(lines) == 1 and lines[0].startswith("farm tune: error: "), err
            assert want in lines[0] and "Traceback" not in err and not out
            assert secs < 4.0, f"{token} token: {secs:.1f} s to fail (Ray must not start first)"


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_closed_pipe_ends_quietly(tmp_path: Path, unbuffered: bool) -> None:
    log = write_log(tmp_path / "big.jsonl", 3000)  # far more output than a pipe holds
    env = {k: v for k, v in farm_env("none", b"").items() if k != "PYTHONUNBUFFERED"}
    # Unbuffered, one large write to a pipe whose reader left ends short without an error at all
    # (the text layer drops the rest of a partial write): quiet too, exit 0.
    codes = {errors.PIPE_CLOSED, 0} if unbuffered else {errors.PIPE_CLOSED}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    for argv in (["log", "show", str(log)], ["log", "export", str(log), "--format", "tvm"]):
        p = subprocess.Popen([sys.executable, "-m", "farm.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.readline()
        p.stdout.close()  # `| head -1`
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) in codes, err
        assert err == "", f"farm {argv[0]} {argv[1]} after a closed pipe:\n{err}"


def test_verbose_twice_shows_the_traceback(tmp_path: Path) -> None:
    code, _, err, _ = run_farm(["-vv", "log", "best", str(tmp_path / "missing.jsonl")], farm_env("none", b""),
                               tmp_path)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
    assert err.rstrip().splitlines()[-1].startswith("farm log best: error: "), err


def test_error_line_format() -> None:
    assert errors.format_error("farm x", ConfigError("a.yaml:3: bad\nsecond")) == (
        "farm x: error: a.yaml:3: bad\n  second")
    assert errors.format_error("farm x", FileNotFoundError(2, "No such file or directory", "f.jsonl")) == (
        "farm x: error: f.jsonl: No such file or directory")
    assert errors.format_error("farm x", ValueError()) == "farm x: error: ValueError"
    internal = errors.format_error("farm x", KeyError("k"), internal=True)
    assert internal.startswith("farm x: error: internal error (KeyError): 'k'") and "-vv" in internal
    assert errors.exit_code(errors.UsageError("u")) == errors.USAGE
    assert errors.exit_code(KernelCrashed("RUNTIME_ERROR: segfault")) == errors.NOT_OK
    assert errors.exit_code(AuthError("authentication failed")) == errors.FAILURE


@pytest.mark.ray
def test_local_ray_prints_no_token_auth_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "farm.cli", "tune", CAMPAIGN, "--trials", "1", "--no-progress",
                        "--log", str(tmp_path / "log.jsonl")], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert "ray: " in r.stderr, f"Ray did not start ({time.monotonic() - t0:.0f} s):\n{r.stderr[-3000:]}"
    assert "Token authentication" not in r.stderr and "RAY_AUTH_MODE" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
