"""The XGBoost cost model: rank configs of a task from loop-nest, knob and device features.

Trained with ``xgb.train`` (no scikit-learn). Labels are GFLOPS normalised by
the best of their (workload, shape, device) group, so tasks of very different
speeds share one model; failures are kept with label 0 (the model must learn
to avoid them, not forget them). Two objectives:

* ``rank`` (default): ``rank:pairwise`` with one query group per task, so
  pairs are only formed within a task and absolute speed never leaks across
  shapes or devices - what makes transfer from another shape's log work;
* ``reg``: squared error weighted toward fast configs (weight 1 + 4 y).

:func:`evaluate` reports pairwise accuracy and recall@k on held-out records.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.tuning.features import FeatureExtractor, prior_of

log = logging.getLogger(__name__)

TaskId = tuple[str, tuple[int, ...], str, str]  # workload, args, target, device key


@dataclass(frozen=True)
class TuneContext:
    """What a tuner knows about its task: workload instance, target and device."""

    workload: str
    args: tuple[int, ...]
    target: str = "llvm -mcpu=native"
    device_key: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)
    threads: int = 0  # threads the kernels run with (RunOptions.num_threads); 0: every core of the device

    @property
    def task(self) -> TaskId:
        return (self.workload, tuple(self.args), self.target, self.device_key)

    def to_json(self) -> dict[str, Any]:
        return {"workload": self.workload, "args": list(self.args), "target": self.target,
                "device_key": self.device_key, "fingerprint": self.fingerprint, "threads": self.threads}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuneContext:
        return cls(str(d["workload"]), tuple(int(a) for a in d["args"]), str(d.get("target", "llvm -mcpu=native")),
                   str(d.get("device_key", "")), dict(d.get("fingerprint") or {}), int(d.get("threads") or 0))


_EXTRACTORS: dict[tuple[Any, ...], FeatureExtractor] = {}


def extractor(ctx: TuneContext, space: Any = None) -> FeatureExtractor:
    """One cached extractor per (task, device descriptor, threads)."""
    fp = ctx.fingerprint or {}
    key = (ctx.workload, tuple(ctx.args), ctx.target, fp.get("cores"), str(fp.get("caches")), fp.get("isa"),
           fp.get("cpu_name"), json.dumps(fp.get("probe"), sort_keys=True, default=str), ctx.threads)
    fe = _EXTRACTORS.get(key)
    if fe is None:
        fe = _EXTRACTORS[key] = FeatureExtractor(ctx.workload, ctx.args, ctx.target, fp, space, ctx.threads)
    return fe


def record_threads(r: Any) -> int:
    """The threads a record's kernel ran with (0: not recorded, every core)."""
    try:
        return int((getattr(r, "timing", None) or {}).get("num_threads") or 0)
    except (TypeError, ValueError):
        return 0


def record_context(r: Any) -> TuneContext:
    return TuneContext(r.workload, tuple(r.args), r.target, r.device_key, r.fingerprint, record_threads(r))


def normalized_labels(gflops: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """GFLOPS / best of the group; 0 stays 0 (failures)."""
    y = np.zeros(len(gflops), dtype=np.float32)
    for g in np.unique(groups):
        m = groups == g
        top = float(gflops[m].max()) if m.any() else 0.0
        if top > 0:
            y[m] = gflops[m] / top
    return y


class CostModel:
    """Predicts a relative score per config (higher is faster)."""

    def __init__(self, objective: str = "rank", num_rounds: int = 80, seed: int = 0,
                 params: dict[str, Any] | None = None, context: TuneContext | None = None,
                 prior_margin: float = 0.0) -> None:
        if objective not in ("rank", "reg"):
            raise ValueError(f"objective must be 'rank' or 'reg', got {objective!r}")
        self.objective, self.num_rounds, self.seed, self.context = objective, num_rounds, seed, context
        self.prior_margin = prior_margin
        self.params: dict[str, Any] = {
            "max_depth": 6, "eta": 0.2, "min_child_weight": 1, "subsample": 0.9, "colsample_bytree": 0.9,
            "lambda": 1.0, "nthread": 1, "verbosity": 0, "seed": seed,
            "objective": "rank:pairwise" if objective == "rank" else "reg:squarederror",
        }
        self.params.update(params or {})
        self.booster: Any = None

    @property
    def trained(self) -> bool:
        return self.booster is not None

    # --- training ----------------------------------------------------------------
    def fit_arrays(self, x: np.ndarray, gflops: np.ndarray, groups: np.ndarray,
                   sample_weight: np.ndarray | None = None) -> CostModel:
        """Train on features ``x`` with raw GFLOPS (0 = failure) and integer task groups."""
        import xgboost as xgb

        order = np.argsort(groups, kind="stable")  # rank objectives need each group contiguous
        x, gflops, groups = x[order], gflops[order], groups[order]
        y = normalized_labels(gflops.astype(np.float64), groups)
        if self.objective == "rank":
            d = xgb.DMatrix(x, label=y, qid=groups, base_margin=self._margin(x))
            if sample_weight is not None:  # rank weights are per group
                w = sample_weight[order]
                d.set_weight(np.array([w[groups == g].mean() for g in np.unique(groups)], dtype=np.float32))
        else:
            w = 1.0 + 4.0 * y
            if sample_weight is not None:
                w = w * sample_weight[order]
            d = xgb.DMatrix(x, label=y, weight=w, base_margin=self._margin(x))
        self.booster = xgb.train(self.params, d, num_boost_round=self.num_rounds)
        return self

    def _margin(self, x: np.ndarray) -> np.ndarray | None:
        """The analytic estimate as the trees' starting point: they learn its error."""
        if not self.prior_margin:
            return None
        return self.prior_margin * prior_of(x)

    def fit(self, records: Sequence[Any], weights: dict[TaskId, float] | None = None) -> CostModel:
        """Train on shared-log records of any tasks (features from each record's own task)."""
        x, g, grp, w = self.featurize(records, weights)
        if len(x) == 0:
            raise ValueError("no records to train on")
        return self.fit_arrays(x, g, grp, w)

    @staticmethod
    def featurize(records: Sequence[Any], weights: dict[TaskId, float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        by_task: dict[TaskId, list[Any]] = defaultdict(list)
        for r in records:
            by_task[(r.workload, tuple(r.args), r.target, r.device_key)].append(r)
        xs, gs, grps, ws = [], [], [], []
        for n, (task, recs) in enumerate(sorted(by_task.items())):
            fe = extractor(record_context(recs[0]))
            xs.append(fe.features([fe.space.locate(r.config_index, r.knobs) for r in recs]))
            gs.append(np.array([r.gflops if r.ok else 0.0 for r in recs], dtype=np.float64))
            grps.append(np.full(len(recs), n, dtype=np.int64))
            ws.append(np.full(len(recs), (weights or {}).get(task, 1.0), dtype=np.float32))
        if not xs:
            return np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(xs), np.concatenate(gs), np.concatenate(grps), np.concatenate(ws)

    # --- inference -----------------------------------------------------------------
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        if self.booster is None:
            raise RuntimeError("the cost model is not trained yet")
        return np.asarray(self.booster.predict(xgb.DMatrix(x, base_margin=self._margin(x))), dtype=np.float64)

    def predict(self, indices: Sequence[int], context: TuneContext | None = None) -> np.ndarray:
        """Scores for configs of ``context`` (default: the model's own task)."""
        ctx = context or self.context
        if ctx is None:
            raise ValueError("predict needs a TuneContext (pass context= or build the model with one)")
        return self.predict_features(extractor(ctx).features(indices))


@dataclass(frozen=True)
class ModelQuality:
    """Held-out ranking quality: pairwise accuracy and recall of the true top-k."""

    n_train: int
    n_test: int
    pairwise_accuracy: float
    recall_at_k: dict[int, float]

    def to_json(self) -> dict[str, Any]:
        return {"n_train": self.n_train, "n_test": self.n_test, "pairwise_accuracy": self.pairwise_accuracy,
                "recall_at_k": {str(k): v for k, v in self.recall_at_k.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelQuality:
        return cls(int(d["n_train"]), int(d["n_test"]), float(d["pairwise_accuracy"]),
                   {int(k): float(v) for k, v in d["recall_at_k"].items()})


def ranking_quality(pred: np.ndarray, truth: np.ndarray, ks: Sequence[int] = (10, 32, 64),
                    max_pairs: int = 200_000, seed: int = 0) -> tuple[float, dict[int, float]]:
    """Pairwise accuracy over pairs with different truth (sampled when many; a predicted tie
    counts half) and
    recall@k = |true top-k among predicted top-k| / k."""
    n = len(truth)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    keep = truth[i] != truth[j]
    i, j = i[keep], j[keep]
    dp = np.sign(pred[i] - pred[j])
    # a tie in the prediction orders the pair at random: half right (the estimate ties often)
    acc = float(np.mean(np.where(dp == 0, 0.5, dp == np.sign(truth[i] - truth[j])))) if len(i) else float("nan")
    rec = {}
    for k in ks:
        if k <= n:
            top_t = set(np.argsort(-truth, kind="stable")[:k].tolist())
            top_p = set(np.argsort(-pred, kind="stable")[:k].tolist())
            rec[k] = len(top_t & top_p) / k
    return acc, rec


def evaluate(model: CostModel, train: Sequence[Any], test: Sequence[Any],
             ks: Sequence[int] = (10, 32, 64)) -> ModelQuality:
    """Fit on ``train`` records, report quality on ``test`` records (one task's)."""
    model.fit(train)
    x, g, _, _ = CostModel.featurize(test)
    acc, rec = ranking_quality(model.predict_features(x), g, ks)
    return ModelQuality(len(train), len(test), acc, rec)
