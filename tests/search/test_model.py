"""The cost model ranks held-out points of functions with a known ranking."""
from __future__ import annotations

import numpy as np
import pytest

from farm.records.measure import Outcome
from farm.tuning.features import DIM, FeatureExtractor, feature_names
from farm.tuning.model import CostModel, TuneContext, evaluate, normalized_labels, ranking_quality

from .conftest import FP, TARGET, make_record


def test_ranking_quality_metric() -> None:
    t = np.arange(20, dtype=float)
    acc, rec = ranking_quality(t, t, ks=(5,))
    assert acc == 1.0 and rec == {5: 1.0}
    acc, rec = ranking_quality(-t, t, ks=(5,))
    assert acc == 0.0 and rec == {5: 0.0}


def test_labels_normalized_per_group_failures_zero() -> None:
    y = normalized_labels(np.array([10.0, 20.0, 0.0, 1.0, 4.0]), np.array([0, 0, 0, 1, 1]))
    assert y.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.25, 1.0])


@pytest.mark.parametrize("objective", ["rank", "reg"])
def test_synthetic_known_ranking(objective: str) -> None:
    # A non-linear speed with an interaction and irrelevant features; two task
    # groups on different scales (the model must rank within each).
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(700, 8)).astype(np.float32)
    speed = np.exp(-((x[:, 0] - 0.3) ** 2) * 4) * (1.5 + np.tanh(3 * x[:, 1] * x[:, 2])) + 0.3 * x[:, 3]
    speed = speed - speed.min() + 0.1
    groups = np.arange(700) % 2
    gflops = speed * np.where(groups == 0, 10.0, 500.0)
    model = CostModel(objective, num_rounds=150).fit_arrays(x[:500], gflops[:500], groups[:500])
    pred = model.predict_features(x[500:])
    for g in (0, 1):
        m = groups[500:] == g
        acc, rec = ranking_quality(pred[m], speed[500:][m], ks=(20,))
        # Random scores give 0.5 and 0.2 here.
        assert acc > 0.75, (objective, g, acc)
        assert rec[20] >= 0.5, (objective, g, rec)


def test_features_shape_speed_and_cache(small_space) -> None:  # type: ignore[no-untyped-def]
    import time

    fe = FeatureExtractor("matmul", (32, 32, 32), TARGET, FP, small_space)
    idx = list(range(0, len(small_space), len(small_space) // 50))[:50]
    t0 = time.perf_counter()
    x = fe.features(idx)
    first = time.perf_counter() - t0
    assert x.shape == (50, DIM) and len(feature_names()) == DIM and np.isfinite(x).all()
    assert first / 50 < 0.02  # a few ms per config
    t0 = time.perf_counter()
    assert np.array_equal(fe.features(idx), x)
    assert time.perf_counter() - t0 < first / 5  # cached
    # Distinct configs give distinct vectors (the model can tell them apart).
    assert len({row.tobytes() for row in x}) == 50


def test_model_on_real_features_ranks_held_out(small_space) -> None:  # type: ignore[no-untyped-def]
    # Speed defined from real loop-nest quantities: the vector width and the
    # register tile; the model must recover the order on unseen configs.
    fe = FeatureExtractor("matmul", (32, 32, 32), TARGET, FP, small_space)
    names = feature_names()
    rng = np.random.default_rng(1)
    idx = rng.choice(len(small_space), 400, replace=False).tolist()
    x = fe.features(idx)
    speed = 1 + x[:, names.index("log2vec")] * 2 - np.abs(x[:, names.index("log2acc")] - 5)
    speed = np.maximum(speed, 0.0) * 10
    recs = [make_record(i, float(s)) if s > 0 else make_record(i, 1.0, outcome=Outcome.RUNTIME_ERROR)
            for i, s in zip(idx, speed)]
    q = evaluate(CostModel("rank", num_rounds=100), recs[:250], recs[250:])
    # Random scores: accuracy 0.5, recall@10 about 0.07. The default pairwise
    # objective weights the top of the ranking, which is what search needs.
    assert q.n_test == 150 and q.pairwise_accuracy > 0.7 and q.recall_at_k[10] >= 0.6, q
    model = CostModel("rank", num_rounds=100, context=TuneContext("matmul", (32, 32, 32), TARGET, "dev-a", FP))
    model.fit(recs[:250])
    assert model.predict(idx[250:260]).shape == (10,)
