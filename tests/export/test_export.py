"""`farm export`: a real tuned kernel, loaded by the standalone loader in a clean
subprocess, and linked into a C program with the generated header."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm.cli.main import main
from farm.export.kernel import EXPORT_FILES, ExportError, select_record
from farm.log import LogRecord, LogWriter, load_log
from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, Outcome, RunOptions

SHAPE = (48, 40, 32)  # M, N, K all different: a transposed kernel cannot pass
DEVICE = "cpu-test"


@pytest.fixture(scope="module")
def tuned_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real log: a few matmul configs built and timed on this CPU."""
    from devices.cpu import CpuBackend
    from farm.target import Target
    from farm.workloads.registry import build_workload, get_workload

    path = tmp_path_factory.mktemp("log") / "farm.jsonl"
    tgt = Target.host()
    space = get_workload("matmul").space(SHAPE, tgt)
    opts = RunOptions(repeat=2, min_repeat_ms=1.0, num_threads=1)
    backend = CpuBackend(DEVICE)
    records = []
    for index in (0, 7919, 15838, len(space) - 1, len(space) // 2):
        cfg = space.get(index)
        mod = build_workload("matmul", SHAPE, cfg, tgt)
        res = backend.run_job(mod.artifact, opts)
        assert res.ok, res.message
        records.append(LogRecord.from_measurement(workload="matmul", args=SHAPE, target=str(tgt), config=cfg,
                                                  result=res, options=opts, device_key=DEVICE,
                                                  build_s=mod.build_s))
    # A failure that must never be picked, whatever its (bogus) numbers say.
    bad = MeasureResult.error(Outcome.WRONG_ANSWER, "mismatch", flops=1e12, device_key=DEVICE)
    records.append(LogRecord.from_measurement(workload="matmul", args=SHAPE, target=str(tgt),
                                              config=space.get(1).to_json(), result=bad, device_key=DEVICE))
    with LogWriter(path) as w:
        w.append(records)
    return path


@pytest.fixture(scope="module")
def export_dir(tuned_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "mm"
    assert main(["export", str(tuned_log), "--workload", "matmul", "--device", DEVICE, "-o", str(out)]) == 0
    return out


def _synthetic(index: int, gflops: float, device: str = "a", args: tuple[int, ...] = (8, 8, 8)) -> LogRecord:
    res = MeasureResult(Outcome.OK, (2 * 512 / gflops / 1e9,), flops=2 * 512, number=1, device_key=device)
    return LogRecord.from_measurement(workload="matmul", args=args, target="llvm", device_key=device,
                                      config={"index": index, "knobs": {}}, result=res)


def test_select_record_names_what_to_pick() -> None:
    recs = [_synthetic(0, 5.0), _synthetic(1, 9.0), _synthetic(2, 7.0, device="b"), _synthetic(3, 1.0, args=(4, 4, 4))]
    with pytest.raises(ExportError, match="several devices.*--device"):
        select_record(recs, "matmul", shape=(8, 8, 8))
    with pytest.raises(ExportError, match="several shapes.*--shape"):
        select_record(recs, "matmul", device="a")
    with pytest.raises(ExportError, match="no successful record of conv2d.*matmul\\(8,8,8\\) on a"):
        select_record(recs, "conv2d")
    assert select_record(recs, "matmul", device="a", shape=(8, 8, 8)).config_index == 1
    assert select_record(recs, "matmul(4,4,4)").config_index == 3


def test_export_writes_the_best_config(tuned_log: Path, export_dir: Path) -> None:
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(EXPORT_FILES)
    meta = json.loads((export_dir / "kernel.json").read_text())
    want = max((r for r in load_log(tuned_log).records if r.ok), key=lambda r: r.gflops)
    assert meta["config"] == want.config and meta["gflops"] == pytest.approx(want.gflops)
    assert meta["device_key"] == DEVICE and meta["workload"]["args"] == list(SHAPE)
    code = (export_dir / "kernel.o").read_bytes()
    art = Artifact.from_header(meta["artifact"], code)  # refuses a wrong size or hash
    assert [(a.name, a.shape, a.role) for a in art.args] == [
        ("A", (48, 32), "in"), ("B", (32, 40), "in"), ("C", (48, 40), "out")]
    header = (export_dir / "kernel.h").read_text()
    for decl in ("void kf_main(void **args);", "double kf_time(void **args, long long n);",
                 "extern int kf_num_threads;", "args[2]  C", "[48][40]"):
        assert decl in header
    # The standalone loader computes the same content hash as kernelfarm.
    from farm.export.loader import _artifact_hash

    assert _artifact_hash(meta["artifact"], code) == art.hash


def test_export_refuses_to_overwrite(tuned_log: Path, export_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    again = tmp_path / "again"
    shutil.copytree(export_dir, again)
    args = ["export", str(tuned_log), "--workload", "matmul", "-o", str(again), "--no-check"]
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device_key"] == DEVICE


_CLIENT = textwrap.dedent("""
    import sys
    for blocked in ("farm", "devices", "rpc"):  # prove the loader needs no kernelfarm
        sys.modules[blocked] = None
    sys.path.insert(0, ".")
    import numpy as np
    import load_kernel

    k = load_kernel.load(".", num_threads=2)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((48, 32)).astype(np.float32)
    B = rng.standard_normal((32, 40)).astype(np.float32)
    C = k(A, B)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    assert C.shape == (48, 40) and C.dtype == np.float32
    assert np.allclose(C, ref, rtol=1e-4, atol=1e-4), float(np.abs(C - ref).max())
    C2 = np.full((48, 40), np.nan, np.float32)
    assert k(A, B, C2) is C2 and np.allclose(C2, C)
    assert k.time(A, B, C2, number=3) > 0
    for bad, exc in (((A.T.copy(), B), ValueError), ((A.astype(np.float64), B), TypeError),
                     ((np.asfortranarray(A), B), ValueError), ((A,), TypeError)):
        try:
            k(*bad)
        except exc:
            pass
        else:
            raise SystemExit(f"no {exc.__name__} for bad arguments")
    open("kernel.o", "r+b").write(b"\\0")  # corrupt one byte: the hash check must refuse it
    try:
        load_kernel.load(".")
    except load_kernel.KernelLoadError as e:
        print("refused:", e)
    else:
        raise SystemExit("corrupted kernel.o was loaded")
    print("LOADER-OK")
""")


def test_loader_runs_standalone_in_a_subprocess(export_dir: Path, tmp_path: Path) -> None:
    alone = tmp_path / "copied"
    alone.mkdir()
    for name in EXPORT_FILES:  # only the export's files, nothing else from the repository
        shutil.copy(export_dir / name, alone / name)
    smoke = subprocess.run([sys.executable, "load_kernel.py", "--number", "3"], cwd=alone,
                           check=False, capture_output=True, text=True, timeout=60)
    assert smoke.returncode == 0, smoke.stderr
    assert "matmul(48,40,32)" in smoke.stdout and "GFLOPS" in smoke.stdout
    r = subprocess.run([sys.executable, "-c", _CLIENT], cwd=alone, check=False, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOADER-OK" in r.stdout and "does not match the hash" in r.stdout


_C_APP = textwrap.dedent("""
    #include <math.h>
    #include <stdio.h>
    #include "kernel.h"

    static float A[KF_A_ELEMS], B[KF_B_ELEMS], C[KF_C_ELEMS];

    int main(void) {
        for (long long i = 0; i < KF_A_ELEMS; i++) A[i] = (float)(i % 7) - 3.0f;
        for (long long i = 0; i < KF_B_ELEMS; i++) B[i] = (float)(i % 5) - 2.0f;
        void *args[KF_NUM_ARGS];
        args[KF_ARG_A] = A; args[KF_ARG_B] = B; args[KF_ARG_C] = C;
        kf_num_threads = 2;
        kf_main(args);
        int bad = 0;
        for (int i = 0; i < 48; i++)
            for (int j = 0; j < 40; j++) {
                double want = 0;
                for (int k = 0; k < 32; k++) want += (double)A[i * 32 + k] * B[k * 40 + j];
                if (fabs(C[i * 40 + j] - want) > 1e-3) bad++;
            }
        double t = kf_time(args, 5);
        printf("C[1][2]=%g bad=%d time=%g\\n", C[42], bad, t);
        return bad != 0 || !(t > 0);
    }
""")


def test_c_program_links_kernel_o(export_dir: Path, tmp_path: Path) -> None:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler `cc` on PATH: cannot test linking kernel.o into a program")
    (tmp_path / "app.c").write_text(_C_APP)
    exe = tmp_path / "app"
    build = subprocess.run([cc, "-O1", "-I", str(export_dir), str(tmp_path / "app.c"), str(export_dir / "kernel.o"),
                            "-o", str(exe), "-lpthread", "-lm"],
                           check=False, capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bad=0" in run.stdout


def test_cross_target_export_is_not_run_here_and_the_loader_refuses_it(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from farm.target import Target, host_triple

    if Target.parse("llvm").arch == "aarch64":
        pytest.skip("this host is AArch64: the export would run here")
    target = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon"
    res = MeasureResult(Outcome.OK, (1e-5,), flops=2 * 16 ** 3, number=1, device_key="rpi4")
    rec = LogRecord.from_measurement(workload="matmul", args=(16, 16, 16), target=target, device_key="rpi4",
                                     config={"index": 3, "knobs": {}}, result=res)
    log = tmp_path / "pi.jsonl"
    with LogWriter(log) as w:
        w.append([rec])
    out = tmp_path / "pi"
    assert main(["export", str(log), "--workload", "matmul", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] is False  # cannot run an AArch64 object here
    meta = json.loads((out / "kernel.json").read_text())
    assert meta["artifact"]["triple"].startswith("aarch64") and meta["device_key"] == "rpi4"
    from farm.export.loader import KernelLoadError, load

    with pytest.raises(KernelLoadError, match=f"kernel is for aarch64.*this machine is {host_triple()}"):
        load(out)


def test_loader_refuses_cpu_features_this_machine_lacks() -> None:
    # Running such an object would die with SIGILL instead of raising.
    from farm.export.loader import KernelLoadError, _check_machine, _llvm
    from farm.target import host_triple

    llvm = _llvm()
    _check_machine({"triple": host_triple(), "features": "", "cpu": "generic"}, llvm)
    with pytest.raises(KernelLoadError, match="lacks features.*made-up-feature"):
        _check_machine({"triple": host_triple(), "features": "+made-up-feature", "cpu": "future"}, llvm)
