"""`farm export` and the machines behind a log: a warning when one device key's records come from
several machines, and `--host` refusing a record built for an ISA or CPU features this host lacks."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.cli.errors import USAGE
from farm.cli.main import main
from farm.export.kernel import NetworkLayer, NotForThisHost, export_network
from farm.export.portability import lacks_on_host
from farm.log import LogRecord, write_log
from farm.records.identity import machine_identity
from farm.records.measure import MeasureResult, Outcome

SHAPE = (8, 8, 8)
A72 = {"isa": "aarch64", "cpu_name": "cortex-a72", "cpu_features": ["neon"]}
A76 = {"isa": "aarch64", "cpu_name": "cortex-a76", "cpu_features": ["dotprod", "neon"]}
# No CPU of any ISA has it: a record asking for it fails --host on every machine that runs the test.
MADE_UP = "kf-made-up-feature"


def _host_triple() -> str:
    from farm.target import host_triple

    return host_triple()


def _foreign_triple() -> str:
    from farm.target import Target

    return "x86_64-unknown-linux-gnu" if Target.parse("llvm").arch == "aarch64" else "aarch64-unknown-linux-gnu"


def _rec(index: int, gflops: float, fp: dict[str, Any], target: str = "llvm", device: str = "pi",
         name: str = "") -> LogRecord:
    flops = 2.0 * 8 ** 3
    res = MeasureResult(Outcome.OK, (flops / gflops / 1e9,), flops=flops, number=1, device_key=device)
    r = LogRecord.from_measurement(workload="matmul", args=SHAPE, target=target, device_key=device,
                                   config={"index": index, "knobs": {}}, result=res, fingerprint=fp)
    return replace(r, device_name=name)


def _log(tmp_path: Path, records: list[LogRecord]) -> Path:
    p = tmp_path / "farm.jsonl"
    write_log(p, records)
    return p


def test_export_warns_when_the_records_of_a_key_come_from_several_machines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, [_rec(0, 5.0, A72, name="pi-1"), _rec(1, 9.0, A72, name="pi-1"), _rec(2, 7.0, A76),
                          _rec(3, 99.0, A76, device="other")])  # another key: not what was chosen from
    out = tmp_path / "mm"
    # --host: the target ("llvm": this host's triple, no features) runs here, so it exports.
    assert main(["export", str(log), "--workload", "matmul", "--device", "pi", "-o", str(out), "--no-check",
                 "--host", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["config"]["index"] == 1
    (warning,) = [ln for ln in cap.err.splitlines() if "warning:" in ln]
    assert warning.startswith("farm export: warning: device key 'pi': the 3 records compared come from 2 machines")
    assert "cortex-a72 aarch64 neon" in warning and "(2 records)" in warning
    assert f"cortex-a76 aarch64 neon [{machine_identity(A76)}] (1 record)" in warning
    assert res["warnings"] == [warning.split("warning: ", 1)[1]]
    meta = json.loads((out / "kernel.json").read_text())
    assert meta["measured_on"] == {"identity": machine_identity(A72), "label": "cortex-a72 aarch64 neon",
                                   "device": "pi-1"}


def test_export_is_quiet_about_one_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, [_rec(0, 5.0, A72), _rec(1, 9.0, {}), _rec(2, 7.0, A76, device="other")])
    assert main(["export", str(log), "--workload", "matmul", "--device", "pi", "-o", str(tmp_path / "mm"),
                 "--no-check"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_export_for_this_host_refuses_features_it_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"llvm -mtriple={_host_triple()} -mcpu=generic -mattr=+{MADE_UP}"
    log = _log(tmp_path, [_rec(4, 9.0, A72, target=target, device="big")])
    out = tmp_path / "mm"
    assert main(["export", str(log), "--workload", "matmul", "-o", str(out), "--host"]) == USAGE
    err = capsys.readouterr().err
    assert err.startswith("farm export: error: matmul(8,8,8) on device key 'big', config 4 {}: built for")
    assert MADE_UP in err and "this host (" in err and "lacks it" in err and "without --host" in err
    assert not out.exists()  # refused before anything was built or written


def test_export_for_this_host_refuses_another_isa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = _foreign_triple()
    log = _log(tmp_path, [_rec(2, 9.0, A72, target=f"llvm -mtriple={foreign} -mcpu=generic", device="far")])
    assert main(["export", str(log), "--workload", "matmul", "-o", str(tmp_path / "mm"), "--host"]) == USAGE
    err = capsys.readouterr().err
    assert f"the {foreign.split('-')[0]} ISA" in err and "device key 'far', config 2" in err


def test_what_a_target_needs_that_a_host_lacks() -> None:
    x86 = {"isa": "x86_64", "cpu_features": ["sse2", "avx", "avx2", "fma"]}
    assert lacks_on_host("llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=generic -mattr=+avx2", x86) == []
    # The CPU name implies AVX-512 although -mattr does not say it: its code would die with SIGILL.
    assert "avx512f" in lacks_on_host("llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=skylake-avx512", x86)
    assert lacks_on_host("llvm -mtriple=aarch64-linux-gnu -mcpu=generic -mattr=+sve", x86) == ["the aarch64 ISA"]
    assert lacks_on_host("llvm -mtriple=aarch64-linux-gnu -mcpu=generic -mattr=+sve,+neon",
                         {"isa": "arm64", "cpu_features": ["neon"]}) == ["sve"]
    assert lacks_on_host("cuda -arch=sm_80", x86) == ["a CUDA GPU (nvptx64)"]


def test_network_export_for_this_host_refuses_before_writing(tmp_path: Path) -> None:
    target = f"llvm -mtriple={_host_triple()} -mcpu=generic -mattr=+{MADE_UP}"
    log = _log(tmp_path, [_rec(4, 9.0, A72, target=target, device="big")])
    layers = [NetworkLayer("fc1", "dense", 1, "matmul", SHAPE)]
    out = tmp_path / "net"
    with pytest.raises(NotForThisHost, match=MADE_UP):
        export_network(log, "tiny", layers, out, host=True)
    assert not out.exists()
