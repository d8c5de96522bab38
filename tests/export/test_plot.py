"""`farm plot`: best-so-far series per task, and a PNG from a small log."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from farm.cli.main import main
from farm.export.plot import PlotError, plot_curves, tuning_curves, wants_log_scale
from farm.log import LogRecord, write_log
from farm.records.measure import MeasureResult, Outcome


def _rec(index: int, gflops: float, device: str = "x86", workload: str = "matmul",
         ok: bool = True) -> LogRecord:
    flops = 2.0 * 32 ** 3
    res = (MeasureResult(Outcome.OK, (flops / gflops / 1e9,), flops=flops, number=1, device_key=device) if ok
           else MeasureResult.error(Outcome.RUNTIME_ERROR, "crash", flops=flops, device_key=device))
    return LogRecord.from_measurement(workload=workload, args=(32, 32, 32), target="llvm", device_key=device,
                                      config={"index": index, "knobs": {}}, result=res, timestamp=1.7e9 + index)


@pytest.fixture
def records() -> list[LogRecord]:
    # Two tasks interleaved in the log, as a campaign writes them, plus a failure.
    return [_rec(0, 5.0), _rec(0, 50.0, "gpu"), _rec(1, 3.0), _rec(1, 400.0, "gpu"),
            _rec(2, 0.0, ok=False), _rec(3, 9.0), _rec(2, 300.0, "gpu")]


def test_best_so_far_per_task(records: list[LogRecord]) -> None:
    curves = tuning_curves(records)
    assert [c.label for c in curves] == ["matmul(32,32,32) on gpu", "matmul(32,32,32) on x86"]
    gpu, x86 = curves
    assert gpu.best == pytest.approx([50.0, 400.0, 400.0])
    # The failure is a trial (it used a device slot) that leaves the best unchanged.
    assert x86.best == pytest.approx([5.0, 5.0, 5.0, 9.0]) and x86.errors == 1 and x86.trials == 4
    assert [c.label for c in tuning_curves(records, device="x86")] == ["matmul(32,32,32) on x86"]
    assert tuning_curves(records, workload="conv2d") == []
    assert wants_log_scale(curves) and not wants_log_scale([x86])


def test_plot_cli_writes_a_png(records: list[LogRecord], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'kernelfarm[plot]')")
    log = tmp_path / "farm.jsonl"
    write_log(log, records)
    out = tmp_path / "curve.png"
    assert main(["plot", str(log), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    printed = capsys.readouterr().out
    assert "matmul(32,32,32) on gpu: 3 trials, best 400.00 GFLOPS" in printed and f"wrote {out}" in printed
    lin = tmp_path / "x86.svg"
    assert main(["plot", str(log), "-o", str(lin), "--device", "x86", "--yscale", "linear", "--no-trials"]) == 0
    assert b"<svg" in lin.read_bytes()[:500]
    assert main(["plot", str(log), "-o", str(tmp_path / "none.png"), "--workload", "conv2d"]) == 1
    assert "no measurements" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_install(records: list[LogRecord], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    with pytest.raises(PlotError, match=r"pip install 'kernelfarm\[plot\]'"):
        plot_curves(tuning_curves(records), tmp_path / "x.png")
