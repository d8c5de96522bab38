"""benchmarks/bench_kernels.py: configs from the target, logs from this host only, a live campaign."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from devices.fingerprint import cpu_fingerprint
from farm.errors import TargetError
from farm.log import LogRecord, LogWriter
from farm.records.measure import MeasureResult, Outcome
from farm.target import Target, local_target
from farm.workloads.registry import get_workload

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_kernels as bk  # noqa: E402

HOST = Target.host()
HOST_FP = cpu_fingerprint(probe=False)
HASWELL = Target.parse("llvm -mcpu=haswell").with_isa_features()
SKX = Target.parse("llvm -mcpu=skylake-avx512").with_isa_features()
ARM = Target.parse("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon")


@pytest.mark.parametrize("tgt, mr, nr", [(HASWELL, 6, 16), (SKX, 6, 64), (ARM, 6, 16)],
                         ids=["avx2-16regs", "avx512-32regs", "neon-32regs"])
def test_hand_gemm_tile_follows_lanes_and_registers(tgt: Target, mr: int, nr: int) -> None:
    knobs = bk.hand_knobs("matmul", tgt)
    assert knobs["tile_i"][-1] == mr and knobs["tile_j"][-1] == nr
    conv = bk.hand_knobs("conv2d", tgt)  # output channels in vectors, half the registers accumulating
    assert conv["pack_k"] == tgt.vector_lanes_f32
    assert conv["tile_y"][-1] * conv["tile_x"][-1] == tgt.num_vector_registers // 2


def test_hand_config_fits_a_shape_too_small_for_the_tile() -> None:
    cfg = bk.hand_config("matmul", (8, 24, 8), SKX)  # N=24 has no 64-column tile: the nearest option
    space = get_workload("matmul").space((8, 24, 8), SKX)
    space.from_json(cfg)
    assert cfg["knobs"]["tile_j"][-1] in (16, 32)
    assert cfg["knobs"]["j_outer"] == space.knobs["j_outer"].encode(space.knobs["j_outer"].options[0])


def _record(target: str, fp: dict[str, Any], gflops: float, index: int = 5) -> LogRecord:
    space = get_workload("matmul").space((64, 64, 64), target)
    res = MeasureResult(Outcome.OK, (1e-3,), "", gflops * 1e6, 1)
    return LogRecord.from_measurement(workload="matmul", args=(64, 64, 64), target=target, config=space.get(index),
                                      result=res, device_key="local", fingerprint=fp)


def test_log_records_of_other_machines_and_targets_are_skipped(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    zen4 = dict(HOST_FP, cpu_name="znver4", cpu_features=["avx2", "avx512f", "fma"])
    log = tmp_path / "log.jsonl"
    with LogWriter(log) as w:
        w.append([_record(str(HOST), HOST_FP, 10.0), _record(str(HOST), zen4, 99.0, 7),
                  _record(str(HASWELL), HOST_FP, 50.0, 9), _record(str(HOST), {}, 80.0, 11)])
    kept = bk.HostLog(log, HOST, HOST_FP).load()
    assert [r.config_index for r in kept] == [5]
    err = capsys.readouterr().err
    assert "skipping 3 of 4 records" in err and "znver4" in err and "reusing 1" in err
    # the same log read for the haswell target on this host keeps the haswell record
    assert [r.config_index for r in bk.HostLog(log, HASWELL, HOST_FP).load()] == [9]
    assert bk.top_configs(kept, "matmul", (64, 64, 64), 5)[0]["index"] == 5


def test_target_must_run_here() -> None:
    with pytest.raises(TargetError, match="does not run on this host"):
        local_target(str(ARM))
    if "+avx512f" not in HOST.features.split(","):
        with pytest.raises(TargetError, match=r"\+avx512f"):
            local_target("llvm -mcpu=skylake-avx512")
    if {"+avx2", "+fma"} <= set(HOST.features.split(",")):
        assert local_target("llvm -mcpu=haswell").vector_lanes_f32 == 8


@pytest.mark.parametrize("argv, msg", [(["--target", str(ARM)], "does not run on this host"),
                                       (["--target", "llvm -mcpu"], "must look like -name=value"),
                                       (["--cases", "matmul_512,nope"], "unknown case(s) nope"),
                                       (["--trials", "-1"], "--trials must be >= 0")])
def test_bad_arguments_are_refused(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bk.main(argv) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.ray
def test_tunes_live_and_reuses_only_this_hosts_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A real campaign (embedded farm, local Ray) on a small case; a log from another
    machine is skipped; the JSON line carries the figures."""
    monkeypatch.setattr(bk, "CASES", [("matmul_512", "matmul", (64, 64, 64), "matmul")])
    log = tmp_path / "bench.jsonl"
    zen4 = dict(HOST_FP, cpu_name="znver4", cpu_features=["avx2", "avx512f", "fma"])
    with LogWriter(log) as w:
        w.append([_record(str(HOST), zen4, 999.0, 3)])
    assert bk.main(["--quick", "--json", "--trials", "6", "--log", str(log)]) == 0
    out, err = capsys.readouterr()
    figures = json.loads(out.strip().splitlines()[-1])
    assert "skipping 1 of 1 records" in err and "znver4" in err
    assert figures["trials_measured"] == 6 and figures["seconds_per_trial"] > 0
    for key in ("matmul_512_vs_numpy", "matmul_512_hand_vs_numpy", "matmul_512_tuned_vs_numpy", "peak_fraction"):
        assert figures[key] > 0, key
    assert figures["matmul_512_tuned_config"] != {"index": 3}
    # a rerun resumes from this host's six records (and skips the foreign one again)
    assert bk.main(["--quick", "--json", "--trials", "6", "--log", str(log), "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert "reusing 6 measured on this host" in err
    assert json.loads(out.strip().splitlines()[-1])["trials_measured"] == 0


def test_blas_core_matches_a_narrower_target_only() -> None:
    wide = "+avx512f" in HOST.features.split(",")
    assert bk.blas_core_for(HASWELL) == ("Haswell" if wide else None)
    assert bk.blas_core_for(Target.parse("llvm -mcpu=sandybridge").with_isa_features()) == (
        "Sandybridge" if wide else None)
    assert bk.blas_core_for(HOST) is None and bk.blas_core_for(ARM) is None


@pytest.mark.skipif(not {"+avx2", "+fma"} <= set(HOST.features.split(",")), reason="the haswell target needs AVX2")
def test_an_avx2_target_is_compared_with_avx2_blas() -> None:
    """Run as a user would: on an AVX-512 host the script re-runs itself with numpy's
    OpenBLAS on its Haswell kernels; on an AVX2 host numpy keeps the host's own."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--json", "--trials", "0", "--cases", "matmul_512",
                           "--target", "llvm -mcpu=haswell"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OPENBLAS_CORETYPE": "Nehalem"})
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    want = bk.blas_core_for(HASWELL)
    if want:
        assert figures["numpy_blas_core"] == want and "re-running with OPENBLAS_CORETYPE" in proc.stderr
    else:  # the stray setting is dropped: numpy runs this host's own kernels
        assert figures["openblas_env_unset"] == ["OPENBLAS_CORETYPE"] and figures["numpy_blas_core"] != "Nehalem"
    assert figures["matmul_512_hand_vs_numpy"] > 0
