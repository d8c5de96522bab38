"""Machine identity: what a record's fingerprint says about the hardware that measured it,
and `farm log best` warning when one device key's records come from several machines."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.cli.main import main
from farm.log import LogRecord, load_log, mixed_machine_warnings, mixed_machines, write_log
from farm.records.identity import (
    Machine,
    machine_identity,
    machine_label,
    missing_features,
    target_features,
    target_isa,
)

from .conftest import make_record

A72 = {"isa": "aarch64", "triple": "aarch64-unknown-linux-gnu", "cpu_name": "cortex-a72",
       "cpu_features": ["crc", "fp-armv8", "neon"], "cores": 4, "probe": {"fma_latency": 7.1},
       "versions": {"llvmlite": "0.43.0"}}
A76 = dict(A72, cpu_name="cortex-a76", cpu_features=["crc", "dotprod", "fp-armv8", "neon"])


def test_identity_ignores_what_changes_without_the_machine_changing() -> None:
    ident = machine_identity(A72)
    assert ident and len(ident) == 12
    # A new LLVM: another triple spelling, features listed with '+' and in another order, absent ones
    # named; a re-run probe, another library version, another core count in a container.
    later = dict(A72, triple="aarch64-linux-gnu", cpu_features=["+neon", "+crc", "+fp-armv8", "-sve"],
                 probe={"fma_latency": 6.8, "peak_gflops": 20.0}, versions={"llvmlite": "0.50.0"}, cores=2)
    assert machine_identity(later) == ident
    assert machine_identity(dict(A72, isa="arm64")) == ident  # macOS names the ISA arm64
    assert machine_identity({k: v for k, v in A72.items() if k != "probe"}) == ident


def test_identity_tells_machines_apart() -> None:
    assert machine_identity(A76) != machine_identity(A72)  # another CPU
    assert machine_identity(dict(A72, cpu_features=["crc", "fp-armv8", "neon", "sve"])) != machine_identity(A72)
    assert machine_identity(dict(A72, emulated=True)) != machine_identity(A72)  # QEMU on a laptop
    h100 = {"kind": "cuda", "isa": "nvptx64", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
            "sm_count": 132, "host": {"isa": "x86_64"}, "probe": {"skipped": "cuda"}}
    a100 = dict(h100, gpu_name="NVIDIA A100", compute_capability="8.0", sm_count=108)
    assert machine_identity(h100) != machine_identity(a100)
    assert machine_identity(dict(h100, sm_count=114, driver_version="12.4")) == machine_identity(h100)


def test_empty_fingerprint_is_unknown() -> None:
    assert machine_identity({}) == machine_identity(None) == ""
    assert machine_identity({"cores": 4, "probe": {"x": 1}}) == ""  # nothing that names hardware
    assert not Machine.of({}).known and str(Machine.of({})) == "unknown machine"


def test_labels_and_json() -> None:
    assert machine_label(A72) == "cortex-a72 aarch64 neon"
    assert machine_label({"isa": "x86_64", "cpu_name": "emeraldrapids",
                          "cpu_features": ["avx", "avx2", "avx512f", "fma"]}) == "emeraldrapids x86_64 avx512"
    assert machine_label({"kind": "cuda", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}) \
        == "NVIDIA H100 sm_90"
    m = Machine.of(A72)
    assert Machine.from_json(json.loads(json.dumps(m.to_json()))) == m
    assert m.identity in str(m) and m.label in str(m)


def test_target_features() -> None:
    t = "llvm -mtriple=aarch64-linux-gnu -mcpu=neoverse-v1 -mattr=+sve,-sve2,+neon"
    assert target_isa(t) == "aarch64" and target_features(t) == {"sve", "neon"}
    assert target_isa("llvm -mcpu=native") == "" and target_features("llvm") == frozenset()
    assert target_isa("cuda -arch=sm_80") == "nvptx64"
    assert missing_features(target_features(t), ["+neon", "crc"]) == ["sve"]
    assert missing_features(["+avx2"], "+avx2,+fma") == []


def _with_fp(r: LogRecord, fp: dict[str, Any], device: str = "") -> LogRecord:
    return replace(r, fingerprint=fp, device_name=device)


def test_device_name_round_trips_and_old_records_still_load(tmp_path: Path) -> None:
    r = _with_fp(make_record(1, 10.0), A72, "pi-1")
    assert LogRecord.from_json(r.to_json()) == r
    assert r.to_json()["device"]["name"] == "pi-1" and r.machine == Machine.of(A72)
    old = make_record(2, 10.0).to_json()
    del old["device"]["fingerprint"]
    p = tmp_path / "old.jsonl"
    p.write_text(json.dumps(old) + "\n")
    (rec,) = load_log(p).records
    assert rec.device_name == "" and rec.fingerprint == {} and not rec.machine.known


def test_mixed_machines_per_key() -> None:
    recs = ([_with_fp(make_record(i, 10.0 + i), A72) for i in range(3)]
            + [_with_fp(make_record(10, 30.0), A76)]
            + [_with_fp(make_record(20, 5.0), {})]  # unknown: listed, never mixes a key by itself
            + [_with_fp(make_record(30, 5.0, device="dev-b"), A72), _with_fp(make_record(31, 6.0, device="dev-b"), {})])
    mixed = mixed_machines(recs)
    assert list(mixed) == ["dev-a"]
    assert [(m.label, n) for m, n in mixed["dev-a"]] == [("cortex-a72 aarch64 neon", 3),
                                                         ("cortex-a76 aarch64 neon", 1), ("unknown machine", 1)]
    (line,) = mixed_machine_warnings(recs)
    assert "'dev-a'" in line and "3 records" in line and "1 record)" in line and machine_identity(A76) in line


def test_log_best_warns_when_a_key_mixes_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "farm.jsonl"
    write_log(p, [_with_fp(make_record(0, 10.0), A72), _with_fp(make_record(1, 20.0), A72),
                  _with_fp(make_record(2, 90.0), A76), _with_fp(make_record(3, 50.0, device="dev-b"), A72)])
    assert main(["log", "best", str(p), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["config"]["index"] == 2
    (warning,) = [ln for ln in cap.err.splitlines() if "warning" in ln]
    assert warning.startswith("farm log best: warning: device key 'dev-a'")
    assert "cortex-a72 aarch64 neon" in warning and "(2 records)" in warning
    assert "cortex-a76 aarch64 neon" in warning and "(1 record)" in warning
    assert main(["log", "best", str(p), "--device", "dev-b"]) == 0  # one machine: nothing to say
    assert "warning" not in capsys.readouterr().err
    assert main(["log", "best", str(p), "--all"]) == 0
    assert capsys.readouterr().err.count("warning:") == 1
