"""Network files and `network:` campaign entries: presets, weights, located errors, numpy baselines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from farm.campaign.baselines import BASELINES, baseline, baseline_key, end_to_end
from farm.campaign.config import CampaignConfigError, load_campaign, parse_campaign
from farm.campaign.network import NetworkConfigError, load_network, presets
from farm.campaign.tasks import TaskSummary
from farm.runtime.buffers import compare

ROOT = Path(__file__).resolve().parents[2]


def campaign(tmp_path: Path, entries: str, top: str = "trials_total: 100\n") -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f"name: net\n{top}workloads:\n{entries}")
    return p


def test_presets_follow_the_published_architectures() -> None:
    assert presets() == ["bert_base", "mobilenet_v2", "resnet18", "resnet50"]
    nets = {n: load_network(ROOT / f"configs/networks/{n}.yaml", 1) for n in presets()}

    def count(net: str, op: str, **where: int) -> int:
        return sum(ly.count for ly in nets[net].layers if ly.op == op)

    assert count("resnet18", "conv2d") == 20 and count("resnet50", "conv2d") == 53
    assert count("mobilenet_v2", "depthwise_conv2d") == 17 and count("mobilenet_v2", "conv2d") == 35
    r18 = {ly.args: ly.count for ly in nets["resnet18"].layers if ly.op == "conv2d"}
    assert r18[(1, 3, 224, 224, 64, 7, 2, 3)] == 1 and r18[(1, 64, 56, 56, 64, 3, 1, 1)] == 4
    assert r18[(1, 64, 56, 56, 128, 1, 2, 0)] == 1  # a 1x1 stride-2 shortcut
    bert = nets["bert_base"]
    dense = {ly.args: ly.count for ly in bert.layers if ly.op == "dense"}
    assert dense == {(128, 768, 768): 48, (128, 3072, 768): 12, (128, 768, 3072): 12, (1, 768, 768): 1}
    bmm = {ly.kernel.rpartition(":")[2]: ly.args for ly in bert.layers if ly.op == "batch_matmul"}
    assert bmm == {"batch_matmul_nt": (12, 128, 128, 64), "batch_matmul": (12, 128, 64, 128)}
    assert [ly.op for ly in bert.layers if not ly.kind] == ["embedding"]  # not tuned


def test_network_entry_expands_to_weighted_tasks(tmp_path: Path) -> None:
    spec = load_campaign(campaign(tmp_path, "  - {name: matmul, shape: [1, 1000, 512]}\n"
                                            "  - {network: resnet18, batch: 1, ops: [conv2d, dense]}\n"))
    w = {(t.name, t.shape): t.weight for t in spec.workloads}
    assert len(w) == 12  # 11 distinct convolutions and the classifier's matmul
    assert w[("conv2d", (1, 64, 56, 56, 64, 3, 1, 1))] == 4
    assert w[("matmul", (1, 1000, 512))] == 2  # the entry and the classifier are one task
    assert [ly.op for ly in spec.networks[0].layers] == ["conv2d"] * 11 + ["dense"]  # ops: drops the rest
    b2 = load_campaign(campaign(tmp_path, "  - {network: resnet18, batch: 2}\n"))
    w2 = {(t.name, t.shape): t.weight for t in b2.workloads}
    assert w2[("conv2d", (2, 64, 56, 56, 64, 3, 1, 1))] == 4 and w2[("relu", (128, 3136))] == 2  # batch scales
    assert spec.trials_total == 100 and spec.warmup == 4 and spec.scheduler == "gradient"
    assert spec.with_overrides(trials=50).trials_total == 50  # --trials: the budget per key
    bert = load_campaign(campaign(tmp_path, "  - {network: bert_base, batch: 1}\n"))
    bw = {(t.name, t.shape): t.weight for t in bert.workloads}
    assert bw[("bias_add", (128, 768))] == 60  # Q, K, V, O and the second feed-forward's bias
    assert bw[("matmul", (128, 768, 768))] == 48 and bw[("layernorm", (128, 768))] == 25


NET_CASES = [
    ("  - {op: conv3d, shape: [1, 2, 3], count: 1}\n", 4, "layers[1].op", "unknown value 'conv3d'"),
    ("  - {op: relu, shape: [4, 8], count: 0}\n", 4, "layers[1].count", "0 is out of range"),
    ("  - {op: dense, count: 2}\n", 4, "layers[1].shape", "missing"),
    ("  - {op: conv2d, shape: [3, 8, 8, 4, 3, 1], count: 1}\n", 4, "layers[1].shape", "takes 7 values"),
    ("  - {op: relu, shape: [4, 8], cout: 2}\n", 4, "layers[1].cout", "did you mean 'count'"),
    ("  - {op: relu, shape: [4, 8], bias: true}\n", 4, "layers[1].bias", "only for dense"),
    ("  - {op: dense, shape: [4, 8, 8], activation: gelu}\n", 4, "layers[1].activation", "without a bias"),
    ("  - {op: conv2d, shape: [3, 4, 4, 8, 7, 1, 0], count: 1}\n", 4, "conv2d.shape", "does not fit"),
]


@pytest.mark.parametrize("layer,line,field,words", NET_CASES, ids=[c[2] + str(n) for n, c in enumerate(NET_CASES)])
def test_malformed_network_file(tmp_path: Path, layer: str, line: int, field: str, words: str) -> None:
    net = tmp_path / "nets" / "mine.yaml"
    net.parent.mkdir()
    net.write_text("network: mine\nlayers:\n  - {op: relu, shape: [4, 8], count: 1}\n" + layer)
    with pytest.raises(NetworkConfigError) as ei:
        load_campaign(campaign(tmp_path, "  - {network: nets/mine.yaml}\n"))
    e = ei.value
    assert (e.file, e.line, e.field) == (str(net), line, field), str(e)
    assert words in str(e) and str(e).startswith(f"{net}:{line}: {field}: ")


CAMPAIGN_CASES = [
    ("  - {network: resnet19}\n", "trials_total: 10\n", 4, "workloads[0].network", "does not exist"),
    ("  - {network: resnet18, batch: 0}\n", "trials_total: 10\n", 4, "workloads[0].batch", "out of range"),
    ("  - {network: resnet18, ops: [conv]}\n", "trials_total: 10\n", 4, "workloads[0].ops[0]", "unknown value"),
    ("  - {network: resnet18, ops: [softmax]}\n", "trials_total: 10\n", 4, "workloads[0].ops", "no layer"),
    ("  - {network: resnet18, shape: [1]}\n", "trials_total: 10\n", 4, "workloads[0].shape", "unknown field"),
    ("  - {network: resnet18}\n", "trials: 5\ntrials_total: 10\n", 3, "trials_total", "not both"),
    ("  - {network: resnet18}\n", "scheduler: gradient\n", 2, "scheduler", "only with trials_total"),
    ("  - {network: resnet18}\n", "trials_total: 10\nscheduler: greedy\n", 3, "scheduler", "unknown value"),
]


@pytest.mark.parametrize("entry,top,line,field,words", CAMPAIGN_CASES,
                         ids=[c[3] + str(n) for n, c in enumerate(CAMPAIGN_CASES)])
def test_malformed_network_entry(tmp_path: Path, entry: str, top: str, line: int, field: str, words: str) -> None:
    p = campaign(tmp_path, entry, top)
    with pytest.raises(CampaignConfigError) as ei:
        load_campaign(p)
    assert (ei.value.line, ei.value.field) == (line, field), str(ei.value)
    assert words in str(ei.value)


def test_each_numpy_baseline_computes_its_layer(tmp_path: Path) -> None:
    """numpy's formula of each operator agrees with the workload that tunes it (built-in references,
    or the naive schedule of a template-free compute), on small shapes."""
    net = tmp_path / "small.yaml"
    net.write_text("""layers:
  - {op: conv2d, shape: [3, 9, 9, 4, 3, 2, 1]}
  - {op: depthwise_conv2d, shape: [4, 8, 8, 3, 2, 1]}
  - {op: dense, shape: [2, 16, 8], bias: true, activation: relu}
  - {op: dense, shape: [2, 16, 8], bias: true, activation: gelu}
  - {op: dense, shape: [3, 16, 8], bias: true, activation: tanh}
  - {op: dense, shape: [4, 16, 8], bias: true}
  - {op: batch_matmul, shape: [2, 4, 5, 3], transpose_b: true}
  - {op: batch_matmul, shape: [2, 4, 5, 3]}
  - {op: softmax, shape: [4, 16]}
  - {op: layer_norm, shape: [4, 16]}
  - {op: relu, shape: [2, 4, 4]}
  - {op: relu6, shape: [2, 4, 4]}
  - {op: add, shape: [3, 8]}
  - {op: add_relu, shape: [2, 3, 3]}
  - {op: max_pool2d, shape: [2, 7, 7, 3, 2, 1]}
  - {op: global_avg_pool, shape: [3, 4, 4]}
""")
    spec = parse_campaign(f"trials_total: 10\nworkloads:\n  - {{network: {net}, batch: 2}}\n", tmp_path / "c.yaml")
    wls = {(w.name, w.shape): w.workload for w in spec.workloads}
    seen = set()
    for ly in spec.networks[0].layers:
        fn, arrays = baseline(ly)
        wl = wls[(ly.workload, ly.args)]
        want = wl.reference(ly.args, [a.astype(np.float32) for a in arrays])[0]
        got = np.asarray(fn(*arrays))
        assert compare(got.reshape(want.shape), want, 1e-4) is None, (ly.op, ly.args)
        seen.add(baseline_key(ly))
    assert seen | {"embedding", "dense"} == set(BASELINES)


def test_end_to_end_sums_count_untuned_layers_with_numpy(tmp_path: Path) -> None:
    spec = parse_campaign("trials_total: 10\nworkloads:\n  - {network: bert_base}\n", tmp_path / "c.yaml")
    net = spec.networks[0]
    times = {(baseline_key(ly), ly.args): 1e-3 for ly in net.layers}
    tasks = [TaskSummary("t", "matmul", (128, 768, 768), "local", 10, 0, 1.0, 1, 1.0, best_s=0.5e-3, weight=48)]
    [row] = end_to_end([net], tasks, times, ["local"])
    total = sum(ly.count for ly in net.layers)
    assert row["numpy_s"] == pytest.approx(total * 1e-3)
    assert row["ours_s"] == pytest.approx((total - 48) * 1e-3 + 48 * 0.5e-3)
    assert row["tuned"] == 1 and "embedding(128,768,30522)" in row["not_tuned"]
