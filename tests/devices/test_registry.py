"""devices.yaml → typed specs: valid files, and malformed ones named by file:line and field."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from devices.registry import DeviceConfigError, FleetSpec, load_fleet, parse_fleet
from devices.targetspec import TargetSyntaxError, parse_target
from farm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD_LOCAL = "  - name: x86\n    key: x86\n    kind: local\n"


def write(tmp_path: Path, text: str, name: str = "devices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    (tmp_path / "id_test").write_text("not really a key\n")
    (tmp_path / "keydir").mkdir(exist_ok=True)
    return path


def test_example_file_is_valid() -> None:
    fleet = load_fleet(REPO / "configs" / "devices.yaml")
    kinds = {d.name: d.kind for d in fleet.devices}
    assert kinds == {"x86-local": "local", "rpi4-a": "ssh", "rpi4-b": "ssh", "gpu-box": "cuda"}
    rpi = fleet.get("rpi4-a")
    assert rpi.ssh is not None and rpi.ssh.user == "pi" and rpi.ssh.port is None
    assert rpi.target.triple == "aarch64-linux-gnu" and rpi.target.features == ("+neon",)
    gpu = fleet.get("gpu-box")
    assert gpu.remote and gpu.ssh is not None and gpu.ssh.port == 2222 and gpu.ssh.user == "farm"
    assert gpu.target.is_gpu and gpu.gpu == 0
    assert fleet.get("x86-local").servers == 2 and not fleet.get("x86-local").remote
    assert fleet.get("rpi4-b").ssh.ssh_config == "rpi4-b"  # type: ignore[union-attr]


def test_specs_are_frozen_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, """
        devices:
          - name: board
            key: rpi4
            kind: ssh
            host: 127.0.0.1
            port: 2200
            key_file: id_test
            python: /opt/py/bin/python3 -X utf8
            servers: 3
    """)
    fleet = load_fleet(path)
    assert isinstance(fleet, FleetSpec)
    dev = fleet.devices[0]
    assert dev.ssh is not None
    assert dev.ssh.key_file == tmp_path / "id_test"  # relative to the YAML file
    assert dev.ssh.use_agent is False  # an explicit key file turns the agent off by default
    assert dev.ssh.python == "/opt/py/bin/python3 -X utf8"
    assert dev.servers == 3 and dev.target.auto
    assert dev.source == f"{path}:2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.name = "other"  # type: ignore[misc]


def test_defaults_apply_where_they_fit(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          user: pi
          port: 2022
          servers: 2
        devices:
          - {name: a, key: k, kind: ssh, host: h1}
          - {name: b, key: k, kind: ssh, host: h2, user: root}
          - {name: c, key: x86, kind: local}
    """)
    a, b, c = load_fleet(path).devices
    assert a.ssh and a.ssh.user == "pi" and a.ssh.port == 2022 and a.servers == 2
    assert b.ssh and b.ssh.user == "root"
    assert c.ssh is None and c.servers == 2  # user/port do not apply to a local device


def test_cuda_local_and_remote(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        devices:
          - {name: g0, key: gpu, kind: cuda, gpu: 1}
          - {name: g1, key: gpu, kind: cuda, ssh_config: gpubox,
             target: "llvm -mtriple=nvptx64-nvidia-cuda -mcpu=sm_90"}
    """,
    )
    g0, g1 = load_fleet(path).devices
    assert not g0.remote and g0.gpu == 1
    assert g1.remote and g1.ssh and g1.ssh.ssh_config == "gpubox" and g1.ssh.host is None


@pytest.mark.parametrize(
    "raw",
    [
        "auto",
        "llvm",
        "llvm -mcpu=native",
        "llvm -mtriple=x86_64-linux-gnu -mcpu=skylake-avx512 -mattr=+avx512f,-avx512vnni",
        "llvm -mtriple=aarch64-linux-gnu -mcpu=generic -mattr=+neon",
        "llvm -mtriple=armv7-linux-gnueabihf -mcpu=cortex-a7 -mattr=+neon,+vfp4",
        "llvm  -device=arm_cpu   -mtriple=aarch64-linux-gnu",
    ],
)
def test_good_targets(raw: str) -> None:
    spec = parse_target(raw)
    assert spec.auto == (raw == "auto")


def test_target_fields() -> None:
    t = parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon,+crc")
    assert (t.arch, t.cpu, t.features) == ("aarch64", "cortex-a72", ("+neon", "+crc"))
    with pytest.raises(TargetSyntaxError, match="did you mean -mattr"):
        parse_target("llvm -mattrs=+neon")


# (yaml text, line, field, words in the reason). Keys are paths relative to the
# file's directory, which holds a file id_test and a directory keydir.
MALFORMED = {
    "unknown kind": ("devices:\n" + GOOD_LOCAL + "  - {name: b, key: k, kind: sssh, host: h}\n",
        5, "devices[1].kind", "did you mean 'ssh'"),
    "missing host": ("devices:\n  - name: b\n    key: k\n    kind: ssh\n",
        2, "devices[0].host", "needs host or ssh_config"),
    "bad target prefix": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: gcc -O3\n",
        5, "devices[0].target", "start with 'llvm'"),
    "unknown triple arch": (
        "devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mtriple=z80-none-elf\n",
        5, "devices[0].target", "unknown architecture 'z80'"),
    "malformed triple": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mtriple=aarch64\n",
        5, "devices[0].target", "malformed triple"),
    "unknown target option": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mcpus=generic\n",
        5, "devices[0].target", "did you mean -mcpu"),
    "bad mattr": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mattr=neon\n",
        5, "devices[0].target", "+name or -name"),
    "option without value": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mcpu\n",
        5, "devices[0].target", "-name=value"),
    "duplicate option": ("devices:\n  - name: b\n    key: k\n    kind: local\n    target: llvm -mcpu=a -mcpu=b\n",
        5, "devices[0].target", "given twice"),
    "duplicate names": ("devices:\n" + GOOD_LOCAL + "  - name: x86\n    key: x86\n    kind: local\n",
        5, "devices[1].name", "first at line 2"),
    "key file missing": ("devices:\n  - {name: b, key: k, kind: ssh, host: h,\n     key_file: nope_ed25519}\n",
        3, "devices[0].key_file", "does not exist"),
    "key file is a directory": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, key_file: keydir}\n",
        2, "devices[0].key_file", "not a file"),
    "port is a string": ("devices:\n  - name: b\n    key: k\n    kind: ssh\n    host: h\n    port: twenty-two\n",
        6, "devices[0].port", "expected an integer"),
    "port out of range": ("devices:\n  - name: b\n    key: k\n    kind: ssh\n    host: h\n    port: 70000\n",
        6, "devices[0].port", "out of range 1..65535"),
    "port zero": ("devices:\n  - name: b\n    key: k\n    kind: ssh\n    host: h\n    port: 0\n",
        6, "devices[0].port", "out of range"),
    "servers zero": ("devices:\n" + GOOD_LOCAL + "    servers: 0\n", 5, "devices[0].servers", "out of range 1..256"),
    "servers negative": ("devices:\n" + GOOD_LOCAL + "    servers: -2\n", 5, "devices[0].servers", "out of range"),
    "servers not int": ("devices:\n" + GOOD_LOCAL + "    servers: 1.5\n",
        5, "devices[0].servers", "expected an integer, got float"),
    "boolean as port": ("devices:\n  - {name: b, key: k, kind: ssh, host: h,\n     port: yes}\n",
        3, "devices[0].port", "expected an integer, got bool"),
    "use_agent not bool": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, use_agent: sometimes}\n",
        2, "devices[0].use_agent", "expected true or false"),
    "unknown field": ("devices:\n" + GOOD_LOCAL + "    sevrers: 2\n",
        5, "devices[0].sevrers", "did you mean 'servers'"),
    "unknown top-level": ("device:\n" + GOOD_LOCAL, 1, "device", "did you mean 'devices'"),
    "ssh field on local": ("devices:\n" + GOOD_LOCAL + "    host: h\n",
        5, "devices[0].host", "not allowed for kind 'local'"),
    "gpu on ssh": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, gpu: 0}\n",
        2, "devices[0].gpu", "not allowed for kind 'ssh'"),
    "missing name": ("devices:\n  - key: k\n    kind: local\n", 2, "devices[0].name", "missing required field"),
    "missing key": ("devices:\n  - name: a\n    kind: local\n", 2, "devices[0].key", "missing required field"),
    "missing kind": ("devices:\n  - name: a\n    key: k\n", 2, "devices[0].kind", "missing required field"),
    "name with spaces": ("devices:\n  - name: my board\n    key: k\n    kind: local\n",
        2, "devices[0].name", "letters, digits"),
    "empty host": ("devices:\n  - {name: b, key: k, kind: ssh, host: ''}\n", 2, "devices[0].host", "non-empty string"),
    "devices not a list": ("devices:\n  name: a\n", 2, "devices", "non-empty list"),
    "empty devices": ("version: 1\ndevices: []\n", 2, "devices", "non-empty list"),
    "device is a scalar": ("devices:\n  - just-a-name\n", 2, "devices[0]", "expected a mapping"),
    "duplicate field": ("devices:\n" + GOOD_LOCAL + "    key: x86b\n",
        5, "devices[0].key", "given twice (first at line 3)"),
    "yaml syntax": ("devices:\n  - name: a\n    key: [unclosed\n", 4, "(yaml)", "syntax error"),
    "bad version": ("version: 2\ndevices:\n" + GOOD_LOCAL, 1, "version", "unsupported version"),
    "bad default": ("defaults:\n  port: 99999\ndevices:\n" + GOOD_LOCAL, 2, "defaults.port", "out of range"),
    "unknown default": ("defaults:\n  usr: pi\ndevices:\n" + GOOD_LOCAL, 2, "defaults.usr", "did you mean 'user'"),
    "cuda with cpu target": (
        "devices:\n  - name: g\n    key: gpu\n    kind: cuda\n    target: llvm -mtriple=x86_64-linux-gnu\n",
        5, "devices[0].target", "nvptx64"),
    "gpu target on local": (
        "devices:\n  - name: g\n    key: gpu\n    kind: local\n    target: llvm -mtriple=nvptx64-nvidia-cuda\n",
        5, "devices[0].target", "use kind: cuda"),
    "bad host key policy": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, host_key_policy: yolo}\n",
        2, "devices[0].host_key_policy", "strict, accept-new"),
    "ssh_config_file without alias": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, ssh_config_file: id_test}\n",
        2, "devices[0].ssh_config_file", "without ssh_config"),
    "bad connect timeout": ("devices:\n  - {name: b, key: k, kind: ssh, host: h, connect_timeout: -1}\n",
        2, "devices[0].connect_timeout", "seconds"),
    "top level is a list": ("- name: a\n", 1, "(top level)", "expected a mapping"),
    "two documents": ("devices:\n" + GOOD_LOCAL + "---\ndevices: []\n", 6, "(yaml)", "one YAML document"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED), ids=lambda c: c.replace(" ", "-"))
def test_malformed(tmp_path: Path, case: str) -> None:
    text, line, field, words = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(DeviceConfigError) as info:
        load_fleet(path)
    err = info.value
    assert isinstance(err, ConfigError)
    assert str(err).startswith(f"{path}:{line}: {field}: "), str(err)
    assert words in err.reason, str(err)
    assert (err.line, err.field) == (line, field)


def test_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match=r":1: devices: the file is empty"):
        parse_fleet("", tmp_path / "e.yaml")
    with pytest.raises(DeviceConfigError, match=r"missing.yaml:1: \(file\): cannot read"):
        load_fleet(tmp_path / "missing.yaml")


def _run_cli(*argv: str) -> int:
    from farm.cli.main import main  # the CLI's one error boundary prints the error line

    return main(list(argv))


def test_cli_check_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli("devices", "check", str(REPO / "configs" / "devices.yaml")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KEY", "KIND", "WHERE", "SERVERS", "TARGET"]
    assert "rpi4-a" in out and "pi@192.168.1.31:22" in out and "4 devices, 3 keys" in out


def test_cli_check_reports_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MALFORMED["port out of range"][0])
    assert _run_cli("devices", "check", str(path)) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"farm devices check: error: {path}:6: devices[0].port: 70000 is out of range 1..65535"
