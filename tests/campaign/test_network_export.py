"""`farm plot --network` and `farm export --network` on a small log of a network's tasks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.cli.main import main
from farm.export.plot import PlotError, network_curve
from farm.log import LogRecord, load_log, write_log
from farm.records.measure import MeasureResult, Outcome

NET = """network: tiny
layers:
  - {op: dense, shape: [8, 16, 8], count: 3}
  - {op: relu, shape: [4, 8], count: 2}
  - {op: embedding, shape: [4, 8, 100], count: 1}
"""


def _rec(wl: object, args: tuple[int, ...], index: int, seconds: float | None, target: str,
         device: str = "cpu") -> LogRecord:
    flops = float(wl.flops(args))  # type: ignore[attr-defined]
    res = (MeasureResult(Outcome.OK, (seconds,), flops=flops, number=1, device_key=device, checked=True)
           if seconds else MeasureResult.error(Outcome.WRONG_ANSWER, "no", flops=flops, device_key=device))
    space = wl.space(args, target)  # type: ignore[attr-defined]
    return LogRecord.from_measurement(workload=wl.name, args=args, target=target,  # type: ignore[attr-defined]
                                      config=space.get(index), result=res, device_key=device,
                                      workload_hash=wl.compute_hash(args, target))  # type: ignore[attr-defined]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    from farm.campaign.config import parse_campaign
    from farm.target import Target

    net = tmp_path / "tiny.yaml"
    net.write_text(NET)
    spec = parse_campaign(f"trials_total: 10\nworkloads:\n  - {{network: {net}}}\n", tmp_path / "c.yaml")
    wls = {w.name: w.workload for w in spec.workloads}
    tgt = str(Target.host())
    mm, relu = wls["matmul"], wls["relu"]
    log = tmp_path / "farm.jsonl"
    write_log(log, [_rec(mm, (8, 16, 8), 0, 1e-3, tgt), _rec(relu, (4, 8), 0, None, tgt),
                    _rec(relu, (4, 8), 1, 2e-4, tgt), _rec(mm, (8, 16, 8), 1, 5e-4, tgt)])
    return net, log


def test_network_curve_starts_when_every_task_has_a_result(tiny: tuple[Path, Path]) -> None:
    net, log = tiny
    recs = load_log(log).records
    c = network_curve(recs, {("matmul", (8, 16, 8)): 3, ("relu", (4, 8)): 2})
    assert c.trials == [3, 4]  # the relu's first trial failed
    assert c.latency_s == pytest.approx([3e-3 + 4e-4, 1.5e-3 + 4e-4])
    with pytest.raises(PlotError, match="several device keys"):
        network_curve(recs + [LogRecord.from_measurement(
            workload="matmul", args=(8, 16, 8), target="llvm", config={"index": 0, "knobs": {}}, device_key="b",
            result=MeasureResult(Outcome.OK, (1e-3,), flops=1.0, number=1))], {("matmul", (8, 16, 8)): 1})


def test_plot_network_cli(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'kernelfarm[plot]')")
    net, log = tiny
    out = tmp_path / "e2e.png"
    assert main(["plot", str(log), "-o", str(out), "--network", str(net), "--numpy"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "tiny batch 1: 1.900 ms after 4 trials" in printed and "numpy" in printed, printed
    assert main(["plot", str(log), "-o", str(out), "--network", "resnet18"]) == 1  # nothing of it in the log
    assert main(["plot", str(log), "-o", str(out), "--network", "nowhere"]) == 2


def test_export_network_cli(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net, log = tiny
    out = tmp_path / "tiny-export"
    assert main(["export", str(log), "--network", str(net), "-o", str(out)]) == 0
    meta = json.loads((out / "network.json").read_text())
    assert meta["network"] == "tiny" and meta["device_key"] == "cpu" and meta["kernels"] == 2
    rows = {r["op"]: r for r in meta["layers"]}
    assert rows["dense"]["directory"] == "matmul_8x16x8" and rows["dense"]["config"]["index"] == 1
    assert rows["relu"]["directory"] == "relu_4x8" and rows["relu"]["checked_here"] is True
    assert "not tuned" in rows["embedding"]["not_exported"]
    for d in ("matmul_8x16x8", "relu_4x8"):
        assert (out / d / "kernel.o").stat().st_size > 0 and (out / d / "load_kernel.py").exists()
    assert meta["tuned_sum_ms"] == pytest.approx(3 * 0.5 + 2 * 0.2)
    assert "2 kernels of tiny on cpu" in capsys.readouterr().out
    assert main(["export", str(log), "--network", str(net), "-o", str(out)]) == 1  # refuses to overwrite
    assert main(["export", str(log), "--network", str(net), "--workload", "matmul", "-o", str(out)]) == 2
