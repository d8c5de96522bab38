"""Model-based tuner: XGBoost cost model + simulated annealing over it.

Each round: refit the model on every measurement so far (plus transferred
records of other shapes/devices), search the space with simulated annealing
from persistent chains (they continue where the last round stopped, so the
search deepens across rounds), and pick the batch greedily by predicted
score. ``diversity=d`` (d >= 2) makes the last ``diverse_fraction`` of a
batch differ from every other pick in at least d knobs; it is off by default
because the good configs of a space cluster (conv2d: a full-row x tile with a
few k tiles and unroll choices), and spreading a batch away from the cluster
measured worse on both replay tasks (conv2d: 65 vs 28.5 trials to 95%,
median of 10 seeds; matmul unchanged). About ``eps`` of each batch is
uniform random, which keeps the model honest in regions it rates poorly.
When the unvisited candidates number at most ``exhaustive_limit`` (small
spaces, replay pools), every one is scored instead of annealing - cheaper
and strictly better than a partial walk.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..model import CostModel, extractor
from .base import Tuner

log = logging.getLogger(__name__)


class XGBTuner(Tuner):
    name = "xgb"

    def __init__(self, space: Any, *, objective: str = "rank", num_rounds: int = 80, n_chains: int = 64,
                 sa_steps: int = 40, eps: float = 0.05, min_train: int = 16, exhaustive_limit: int = 4096,
                 diversity: int = 1, diverse_fraction: float = 0.5, transfer: Any = None, max_transfer: int = 4000,
                 model_params: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(space, **kw)
        if self.context is None:
            raise ValueError("the xgb tuner needs a TuneContext (workload, args, target) for its features")
        self.model = CostModel(objective, num_rounds=num_rounds, seed=self.seed, params=model_params,
                               context=self.context)
        self.fe = extractor(self.context, space)
        self.n_chains, self.sa_steps, self.eps = n_chains, sa_steps, eps
        self.min_train, self.exhaustive_limit, self.diversity = min_train, exhaustive_limit, diversity
        self.diverse_fraction = min(1.0, max(0.0, diverse_fraction))
        self.max_transfer = max_transfer
        self._dirty = False
        self._src: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._chains: np.ndarray | None = None
        if transfer:
            self._transfer(list(transfer))

    # --- data ------------------------------------------------------------------
    def _observed(self, results: list[tuple[int, float]]) -> None:
        self._dirty = True

    def _transfer(self, records: list[Any]) -> None:
        if len(records) > self.max_transfer:  # features cost ~1 ms each: bound the start-up time
            keep = self.rng.choice(len(records), self.max_transfer, replace=False)
            records = [records[i] for i in sorted(keep)]
        x, g, grp, _ = CostModel.featurize(records)
        if len(x):
            self._src = (x, g, grp + 1)  # group 0 is this task
            self._dirty = True
            log.info("xgb tuner: %d transfer records from %d other task(s)", len(x), len(np.unique(grp)))

    def _fit(self) -> None:
        idx = list(self.results)
        xs = [self.fe.features(idx)] if idx else []
        gs = [np.array([self.results[i] for i in idx], dtype=np.float64)] if idx else []
        grps = [np.zeros(len(idx), dtype=np.int64)] if idx else []
        if self._src is not None:
            xs.append(self._src[0])
            gs.append(self._src[1])
            grps.append(self._src[2])
        self.model.fit_arrays(np.concatenate(xs), np.concatenate(gs), np.concatenate(grps))
        self._dirty = False

    # --- search ----------------------------------------------------------------
    def _propose(self, n: int) -> list[int]:
        if self._dirty and (len(self.results) >= self.min_train or self._src is not None):
            self._fit()
        if not self.model.trained:
            return self.cands.sample(self.rng, n, self.visited)
        cand, score = self._candidates(n)
        picks = self._diverse_top(cand, score, n)
        n_rand = int(self.rng.binomial(n, self.eps))
        if n_rand:
            picks = picks[: n - n_rand]
            picks += self.cands.sample(self.rng, n_rand, self.visited | set(picks))
        return picks

    def _score(self, idx: np.ndarray) -> np.ndarray:
        return self.model.predict_features(self.fe.features(idx.tolist()))

    def _candidates(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        unvisited = len(self.cands) - len(self.visited & self._cand_set())
        if unvisited <= self.exhaustive_limit:
            rest = self.cands.remaining(self.visited)
            return rest, self._score(rest)
        return self._anneal()

    def _anneal(self) -> tuple[np.ndarray, np.ndarray]:
        if self._chains is None:
            self._chains = np.asarray(self.cands.sample(self.rng, self.n_chains, set()), dtype=np.int64)
        cur = self._chains
        # Restart a quarter of the chains from the best measured configs: exploitation
        # around real evidence, while the other chains keep their own walk.
        top = sorted(self.results, key=lambda i: -self.results[i])[: max(1, self.n_chains // 4)]
        cur[: len(top)] = top
        cur_s = self._score(cur)
        seen: dict[int, float] = dict(zip(cur.tolist(), cur_s.tolist()))
        scale = float(np.std(cur_s)) + 1e-9
        for step in range(self.sa_steps):
            temp = scale * max(1e-3, 1.0 - step / self.sa_steps)
            new = self.cands.mutate(cur, self.rng, p=0.05)
            new_s = self._score(new)
            seen.update(zip(new.tolist(), new_s.tolist()))
            with np.errstate(over="ignore"):
                accept = (new_s > cur_s) | (self.rng.random(len(cur)) < np.exp((new_s - cur_s) / temp))
            cur, cur_s = np.where(accept, new, cur), np.where(accept, new_s, cur_s)
        self._chains = cur
        keys = [i for i in seen if i not in self.visited]
        return np.asarray(keys, dtype=np.int64), np.asarray([seen[i] for i in keys], dtype=np.float64)

    def _diverse_top(self, cand: np.ndarray, score: np.ndarray, n: int) -> list[int]:
        if len(cand) == 0:
            return []
        order = np.argsort(-score, kind="stable")[: max(20 * n, 256)]
        cand = cand[order]
        ch = self.cands.to_choices(cand)
        picked: list[int] = []
        # The first picks are the model's best, near-duplicates or not (the good
        # configs of a space cluster: several of them are worth measuring); the
        # rest of the batch must differ from every pick in >= diversity knobs.
        greedy = n - int(round(n * self.diverse_fraction))
        for r in range(len(cand)):
            if len(picked) == n:
                break
            if len(picked) >= greedy and picked and np.min((ch[picked] != ch[r]).sum(axis=1)) < self.diversity:
                continue
            picked.append(r)
        if len(picked) < n:  # not enough diverse ones: fill by score
            chosen = set(picked)
            picked += [r for r in range(len(cand)) if r not in chosen][: n - len(picked)]
        return [int(cand[r]) for r in picked]
