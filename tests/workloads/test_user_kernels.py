"""User kernels: loading by FILE.py:function, clear errors naming the kernel and the line,
AutoTVM habits, identity by compute hash, and the te.all / & forms."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import farm
from farm import te
from farm.errors import ConfigError, UserKernelError
from farm.log import LogRecord, best_per_task
from farm.records.measure import MeasureResult, Outcome
from farm.runtime.buffers import compare, seeded_inputs
from farm.workloads.loader import load_kernel
from farm.workloads.registry import build_workload

HERE = Path(__file__).parent
BAD = HERE / "kernels_bad" / "bad.py"
TARGET = "llvm -mcpu=native"


@pytest.mark.parametrize("func, line, what", [
    ("raises", 9, "raised ValueError: the user's bug"),
    ("no_schedule", None, "returned list, not (schedule, [tensors])"),
    ("empty_space", 24, "needs at least one option"),
])
def test_bad_templates_name_the_template_and_the_line(func: str, line: int | None, what: str) -> None:
    wl = load_kernel(f"{BAD}:{func}")
    with pytest.raises(UserKernelError) as err:
        wl.space((8,), TARGET)
    msg = str(err.value)
    assert f"template {func}" in msg and what in msg, msg
    assert f"bad.py:{line}" in msg if line else "bad.py:" in msg, msg


def test_loader_errors_name_file_function_and_line(tmp_path: Path) -> None:
    with pytest.raises(UserKernelError, match="kernel file .*nope.py not found"):
        load_kernel("nope.py:f", tmp_path)
    with pytest.raises(UserKernelError, match=r"has no function 'missing' \(it defines: .*plain_compute"):
        load_kernel(f"{BAD}:missing")
    with pytest.raises(UserKernelError, match=r"ValueError: math domain error \(.*import_error.py:3\)"):
        load_kernel(f"{HERE / 'kernels_bad' / 'import_error.py'}:f")
    with pytest.raises(UserKernelError, match="no module 'no_such_module_kf'"):
        load_kernel("no_such_module_kf:f")
    with pytest.raises(UserKernelError, match="names a file but no function"):
        load_kernel("kernels/x.py")
    with pytest.raises(ConfigError, match="takes 1 shape values"):
        load_kernel(f"{BAD}:plain_compute").check_args((4, 4))


def test_a_plain_function_is_registered_as_the_kind_asked() -> None:
    wl = load_kernel(f"{BAD}:plain_compute", kind="compute")
    assert wl.kind == "compute" and wl.params == ("n",)
    mod = build_workload(wl, (37,), 0, TARGET)
    a = seeded_inputs(mod.artifact.args, 0)
    mod(*a)
    assert compare(a[1], a[0] * 3.0, 1e-6) is None


def test_autotvm_habits_val_and_apply() -> None:
    @farm.template("t_habits")
    def habits(cfg, n, m):  # type: ignore[no-untyped-def]
        A = te.placeholder((n, m), name="A")
        B = te.compute((n, m), lambda i, j: A[i, j] * 2.0, name="B")
        s = te.create_schedule(B.op)
        cfg.define_split("tile", m, num_outputs=2, candidates=[[1, 4, 8]])
        cfg.define_knob("vec", [0, 1])
        cfg.define_reorder("order", [[0, 1], [1, 0]])
        jo, ji = cfg["tile"].apply(s, B, B.op.axis[1])
        cfg["order"].apply(s, B, [B.op.axis[0], jo])
        if cfg["vec"].val:
            s[B].vectorize(ji)
        assert cfg["vec"].val in (0, 1) and cfg["vec"] == cfg["vec"].val
        assert cfg.target.kind == "llvm"
        return s, [A, B]

    space = habits.space((5, 24), TARGET)
    assert len(space) == 12
    for i in range(len(space)):
        mod = build_workload(habits, (5, 24), i, TARGET)
        a = seeded_inputs(mod.artifact.args, i)
        mod(*a)
        assert compare(a[1], a[0] * 2.0, 1e-6) is None


def _kernel_file(tmp_path: Path, scale: str) -> Path:
    d = tmp_path / f"k{scale.replace('.', '')}"
    d.mkdir()
    (d / "same.py").write_text(textwrap.dedent(f"""
        from farm import te, compute

        @compute("same_name")
        def same_name(n):
            A = te.placeholder((n,), name="A")
            return [A, te.compute((n,), lambda i: A[i] * {scale}, name="B")]
    """))
    return d / "same.py"


def test_two_kernels_with_one_name_never_share_records(tmp_path: Path) -> None:
    one = load_kernel(f"{_kernel_file(tmp_path, '2.0')}:same_name")
    two = load_kernel(f"{_kernel_file(tmp_path, '3.0')}:same_name")
    h1, h2 = one.compute_hash((64,)), two.compute_hash((64,))
    assert h1 and h2 and h1 != h2
    assert one.compute_hash((64,)) == h1  # stable
    recs = []
    for wl, h, cost in ((one, h1, 1e-6), (two, h2, 2e-6)):
        res = MeasureResult(Outcome.OK, (cost,), flops=64.0, checked=True)
        recs.append(LogRecord.from_measurement(workload=wl.name, args=(64,), target=TARGET, config={"index": 0},
                                               result=res, device_key="cpu", workload_hash=h))
    per = best_per_task(LogRecord.from_json(r.to_json()) for r in recs)
    assert {k[1] for k in per} == {h1, h2}  # two tasks, not one
    assert {r.workload_label for r in per.values()} == {f"same_name@{h1[:8]}(64)", f"same_name@{h2[:8]}(64)"}
    assert all(r.checked for r in per.values())


def test_old_records_without_a_hash_still_match_builtins() -> None:
    old = {"v": 1, "workload": {"name": "matmul", "args": [8, 8, 8]}, "target": TARGET,
           "device": {"key": "cpu"}, "config": {"index": 3, "knobs": {}},
           "result": {"outcome": "OK", "costs": [1e-6], "gflops": 1.0}}
    r = LogRecord.from_json(old)
    assert r.workload_hash == "" and r.checked is None and r.task_key == ("matmul", "", (8, 8, 8), "cpu")


def test_a_zero_flop_kernel_has_a_best() -> None:
    recs = [LogRecord.from_measurement(workload="copy", args=(8,), target=TARGET, config={"index": i},
                                       result=MeasureResult(Outcome.OK, (c,), flops=0.0), device_key="cpu",
                                       workload_hash="abc")
            for i, c in enumerate((3e-6, 1e-6, 2e-6))]
    (best,) = best_per_task(recs).values()
    assert best.config_index == 1


def test_te_all_and_condition_operators_build() -> None:
    x = te.placeholder((2, 5, 5), name="X")
    y1 = te.compute((2, 7, 7), lambda c, i, j: te.if_then_else(te.all(i >= 1, i <= 5, j >= 1, j <= 5),
                                                               x[c, i - 1, j - 1], 0.0), name="Y1")
    y2 = te.compute((2, 7, 7), lambda c, i, j: te.if_then_else((i >= 1) & (i <= 5) & ~((j < 1) | (j > 5)),
                                                               x[c, i - 1, j - 1], 0.0), name="Y2")
    want = None
    for y in (y1, y2):
        mod = farm.build(te.create_schedule(y.op), [x, y])
        a = np.random.default_rng(0).random((2, 5, 5), dtype=np.float32)
        out = np.zeros((2, 7, 7), np.float32)
        mod(a, out)
        want = np.pad(a, ((0, 0), (1, 1), (1, 1)))
        assert np.array_equal(out, want)
    with pytest.raises(TypeError, match="combines conditions"):
        _ = x[0, 0, 0] & (x[0, 0, 1] > 0)
