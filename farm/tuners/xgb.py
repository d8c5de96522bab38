"""Model-based tuner: XGBoost cost model + simulated annealing over it.

Each round: refit the model on every measurement of this task (its starting
margin is the analytic pipeline estimate, ``prior_margin``), search the space
with simulated annealing from persistent chains (they continue where the last
round stopped, so the search deepens across rounds), and pick the batch
greedily by predicted score. Until the model has ``min_train`` points the
estimate alone ranks (``cold_start="prior"``). Transferred records of other
shapes/devices train a second model over both tasks; the two are experts that
split each batch, three quarters to the one whose picks measured best so far. ``diversity=d`` (d >= 2) makes the last ``diverse_fraction`` of a
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
from collections.abc import Callable
from typing import Any

import numpy as np

from ..features import PRIOR_COL
from ..model import CostModel, extractor
from .base import Tuner

log = logging.getLogger(__name__)


class XGBTuner(Tuner):
    name = "xgb"

    def __init__(self, space: Any, *, objective: str = "rank", num_rounds: int = 80, n_chains: int = 64,
                 sa_steps: int = 40, eps: float = 0.05, min_train: int = 16, exhaustive_limit: int = 4096,
                 diversity: int = 1, diverse_fraction: float = 0.5, transfer: Any = None, max_transfer: int = 4000,
                 model_params: dict[str, Any] | None = None, cold_start: str = "prior", prior_margin: float = 3.0,
                 **kw: Any) -> None:
        super().__init__(space, **kw)
        if self.context is None:
            raise ValueError("the xgb tuner needs a TuneContext (workload, args, target) for its features")
        if cold_start not in ("prior", "random"):
            raise ValueError(f"cold_start must be 'prior' or 'random', got {cold_start!r}")
        self.cold_start = cold_start

        def model() -> CostModel:
            return CostModel(objective, num_rounds=num_rounds, seed=self.seed, params=model_params,
                             context=self.context, prior_margin=prior_margin)

        self.model = model()  # this task's measurements only
        self.union = model()  # plus the transferred records, when there are any
        self.fe = extractor(self.context, space)
        self.n_chains, self.sa_steps, self.eps = n_chains, sa_steps, eps
        self.min_train, self.exhaustive_limit, self.diversity = min_train, exhaustive_limit, diversity
        self.diverse_fraction = min(1.0, max(0.0, diverse_fraction))
        self.max_transfer = max_transfer
        self._dirty = False
        self._src: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._chains: dict[str, np.ndarray] = {}
        self.picked_by: dict[int, str] = {}  # config -> the expert that proposed it
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
        x = self.fe.features(idx)
        g = np.array([self.results[i] for i in idx], dtype=np.float64)
        if len(idx) >= self.min_train:
            self.model.fit_arrays(x, g, np.zeros(len(idx), dtype=np.int64))
        if self._src is not None:
            self.union.fit_arrays(np.concatenate([x, self._src[0]]), np.concatenate([g, self._src[1]]),
                                  np.concatenate([np.zeros(len(idx), dtype=np.int64), self._src[2]]))
        self._dirty = False

    # --- search ----------------------------------------------------------------
    def _experts(self) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
        """Who ranks candidates: "own" (this task's model, or before it has
        ``min_train`` points the analytic estimate) and, with transferred
        records, "transfer" (a model of both)."""
        out: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []
        if self.model.trained:
            out.append(("own", self.model.predict_features))
        elif self.cold_start == "prior":
            out.append(("own", lambda x: prior_of(x) + 1e-6 * self.rng.random(len(x))))  # ties at random
        if self.union.trained:
            out.append(("transfer", self.union.predict_features))
        return out

    def _shares(self, names: list[str], n: int) -> list[int]:
        """Batch slots per expert. Another shape's records can rank this task
        well (matmul) or badly (conv2d of another width): the expert whose picks
        measured best so far gets three quarters, the other keeps a quarter."""
        if len(names) == 1:
            return [n]
        best = {e: max((g for i, g in self.results.items() if self.picked_by.get(i) == e), default=0.0)
                for e in names}
        if best[names[0]] == best[names[1]]:
            return [n - n // 2, n // 2]
        lead = max(names, key=lambda e: best[e])
        small = max(1, n // 4) if n > 1 else 0
        return [n - small if e == lead else small for e in names]

    def _propose(self, n: int) -> list[int]:
        if self._dirty and (len(self.results) >= self.min_train or self._src is not None):
            self._fit()
        experts = self._experts()
        if not experts:
            return self.cands.sample(self.rng, n, self.visited)
        picks: list[int] = []
        for (name, scorer), k in zip(experts, self._shares([e for e, _ in experts], n)):
            if k <= 0:
                continue
            cand, score = self._candidates(name, scorer)
            keep = ~np.isin(cand, picks)
            mine = self._diverse_top(cand[keep], score[keep], k)
            self.picked_by.update((i, name) for i in mine)
            picks += mine
        n_rand = int(self.rng.binomial(n, self.eps))
        if n_rand:
            picks = picks[: n - n_rand]
            picks += self.cands.sample(self.rng, n_rand, self.visited | set(picks))
        return picks

    def _candidates(self, name: str, scorer: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        def score(idx: np.ndarray) -> np.ndarray:
            return scorer(self.fe.features(idx.tolist()))

        unvisited = len(self.cands) - len(self.visited & self._cand_set())
        if unvisited <= self.exhaustive_limit:
            rest = self.cands.remaining(self.visited)
            return rest, score(rest)
        return self._anneal(name, score)

    def _anneal(self, name: str, score: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        cur = self._chains.get(name)
        if cur is None:
            cur = np.asarray(self.cands.sample(self.rng, self.n_chains, set()), dtype=np.int64)
        # Restart a quarter of the chains from the best measured configs: exploitation
        # around real evidence, while the other chains keep their own walk.
        top = sorted(self.results, key=lambda i: -self.results[i])[: max(1, self.n_chains // 4)]
        cur[: len(top)] = top
        cur_s = score(cur)
        seen: dict[int, float] = dict(zip(cur.tolist(), cur_s.tolist()))
        scale = float(np.std(cur_s)) + 1e-9
        for step in range(self.sa_steps):
            temp = scale * max(1e-3, 1.0 - step / self.sa_steps)
            new = self.cands.mutate(cur, self.rng, p=0.05)
            new_s = score(new)
            seen.update(zip(new.tolist(), new_s.tolist()))
            with np.errstate(over="ignore"):
                accept = (new_s > cur_s) | (self.rng.random(len(cur)) < np.exp((new_s - cur_s) / temp))
            cur, cur_s = np.where(accept, new, cur), np.where(accept, new_s, cur_s)
        self._chains[name] = cur
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


def prior_of(x: np.ndarray) -> np.ndarray:
    """The analytic estimate column of a feature matrix (a config that did not lower: 0)."""
    return np.nan_to_num(x[:, PRIOR_COL].astype(np.float64), nan=0.0)
