"""Malformed campaign files: each a clear error naming file:line and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from farm.campaign.config import CampaignConfigError, load_campaign, parse_campaign

OK_WL = "workloads:\n  - name: matmul\n    shape: [8, 8, 8]\n"

CASES = [
    ("", 1, "workloads", "empty"),
    ("tuner: xgb\n", 1, "workloads", "missing"),
    ("workloads: []\n", 1, "workloads", "empty"),
    ("workloads: matmul\n", 1, "workloads", "expected a list"),
    ("workloads:\n  - name: matmull\n    shape: [8, 8, 8]\n", 2, "workloads[0].name", "unknown workload"),
    ("workloads:\n  - name: matmul\n", 2, "workloads[0].shape", "missing"),
    ("workloads:\n  - shape: [8, 8, 8]\n", 2, "workloads[0].name", "missing"),
    ("workloads:\n  - name: matmul\n    shape: [8, 8]\n", 3, "workloads[0].shape", "takes 3 shape values"),
    ("workloads:\n  - name: matmul\n    shape: [8, -8, 8]\n", 3, "workloads[0].shape[1]", "out of range"),
    ("workloads:\n  - name: matmul\n    shape: [8, x, 8]\n", 3, "workloads[0].shape[1]", "expected an integer"),
    ("workloads:\n  - name: matmul\n    shape: [8, 8, 8]\n    shap: 1\n", 4, "workloads[0].shap", "unknown field"),
    ("tuner: xbg\n" + OK_WL, 1, "tuner", "did you mean 'xgb'"),
    ("trials: 0\n" + OK_WL, 1, "trials", "out of range"),
    ("trials: many\n" + OK_WL, 1, "trials", "expected an integer"),
    ("batch_size: 1.5\n" + OK_WL, 1, "batch_size", "expected an integer"),
    ("timing:\n  repet: 3\n" + OK_WL, 2, "timing.repet", "did you mean 'repeat'"),
    ("timing:\n  timeout_s: -1\n" + OK_WL, 2, "timing.timeout_s", "expected a number"),
    ("timing: 3\n" + OK_WL, 1, "timing", "expected a mapping"),
    ("device_keys: [a, a]\n" + OK_WL, 1, "device_keys", "listed twice"),
    ("device_keys: ['bad key']\n" + OK_WL, 1, "device_keys[0]", "must be letters"),
    ("devices: nowhere.yaml\n" + OK_WL, 1, "devices", "does not exist"),
    ("target: 'llvm -mtriple=bogus-x'\n" + OK_WL, 1, "target", "LLVM does not know"),
    ("trails: 5\n" + OK_WL, 1, "trails", "did you mean 'trials'"),
    (OK_WL + "  - name: matmul\n    shape: [8, 8, 8]\n", 4, "workloads", "listed twice"),
    ("workloads:\n  - name: conv2d\n    shape: [1, 1, 2, 2, 1, 5, 1, 0]\n", 3, "workloads[0].shape", "does not fit"),
    ("workloads: [\n", 2, "<file>", "not valid YAML"),
    ("transfer: maybe\n" + OK_WL, 1, "transfer", "true or false"),
    ("exclusive_timing: sometimes\n" + OK_WL, 1, "exclusive_timing", "true, false or auto"),
    ("exclusive_timing: [true]\n" + OK_WL, 1, "exclusive_timing", "true, false or auto"),
]


@pytest.mark.parametrize("text,line,field,words", CASES, ids=[f"{c[2]}-{n}" for n, c in enumerate(CASES)])
def test_malformed_campaign(tmp_path: Path, text: str, line: int, field: str, words: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(CampaignConfigError) as ei:
        load_campaign(p)
    e = ei.value
    assert (e.line, e.field) == (line, field), str(e)
    assert words in str(e)
    assert str(e).startswith(f"{p}:{line}: {field}: ")


def test_quickstart_is_valid_and_defaults() -> None:
    root = Path(__file__).resolve().parents[2]
    spec = load_campaign(root / "configs/campaigns/quickstart.yaml")
    assert {w.name for w in spec.workloads} == {"matmul", "conv2d"}
    assert spec.device_keys == ("local",)
    spec2 = spec.with_overrides(trials=5, log="x.jsonl")
    assert spec2.trials == 5 and str(spec2.log) == "x.jsonl"
    with pytest.raises(CampaignConfigError):
        spec.with_overrides(trials=0)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignConfigError, match="cannot read"):
        load_campaign(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CampaignConfigError):
        load_campaign(tmp_path / "bin.yaml")
    assert parse_campaign(OK_WL).name == "campaign"


@pytest.mark.parametrize("raw,want", [("auto", None), ("true", True), ("false", False)])
def test_exclusive_timing_values(raw: str, want: bool | None) -> None:
    from farm.campaign.config import parse_campaign

    assert parse_campaign(f"exclusive_timing: {raw}\n" + OK_WL).exclusive_timing is want
    assert parse_campaign(OK_WL).exclusive_timing is None  # absent = auto
