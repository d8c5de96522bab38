"""Model-based tuner: XGBoost cost model + simulated annealing over it.

Each round: refit the model on every measurement of this task (its starting
margin is the analytic pipeline estimate, ``prior_margin``), search the space
with simulated annealing from persistent chains (they continue where the last
round stopped, so the search deepens across rounds), and pick the batch
greedily by predicted score. Up to three experts split each batch (see
``_experts``): the analytic estimate and a model trained on top of it, a model
learned from scratch, and a model that also holds transferred records of other
shapes/devices; the one whose recent picks measured fastest gets most of it.
``diversity=d`` (d >= 2) makes the last ``diverse_fraction`` of a batch
differ from every other pick in at least d knobs; it is off by default
because the good configs of a space cluster (conv2d: a full-row x tile with
a few k tiles and unroll choices), and spreading a batch away from the
cluster measured worse on both replay tasks (conv2d: 65 vs 28.5 trials to
95%, median of 10 seeds; matmul unchanged). About ``eps`` of each batch is
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

from farm.errors import FarmError
from farm.tuning.features import prior_of
from farm.tuning.model import CostModel, TuneContext, extractor, ranking_quality
from farm.tuning.tuners.base import Tuner

log = logging.getLogger(__name__)

CREDIT_WINDOW = 8  # an expert is judged on its most recent measured picks
TRUST_MIN = 8  # measured configs of this task before transferred records are judged on them
FOREIGN_MARGIN = 0.1  # pairwise accuracy records of another ISA need beyond the estimate's to lead
# The estimate cannot tell configs apart closer than this (fraction of peak): on AVX2 GEMM it
# rates unpacked B 0.1% above packed (of 327 configs re-timed in a haswell run, packed ones
# averaged 207.5 GFLOPS, unpacked 187.6). Within it, its first picks are drawn at random (a
# fixed draw per config), not by the estimate's rounding.
ESTIMATE_RESOLUTION = 0.02
LEVEL_FRACTION = 0.25  # of the untrained estimate's picks: one per next level of it (_level_top)
Scorer = Callable[[np.ndarray], np.ndarray]  # feature rows -> scores, higher is better


class XGBTuner(Tuner):
    name = "xgb"

    def __init__(self, space: Any, *, objective: str = "rank", num_rounds: int = 80, n_chains: int = 64,
                 sa_steps: int = 40, eps: float = 0.05, min_train: int = 16, exhaustive_limit: int = 4096,
                 diversity: int = 1, diverse_fraction: float = 0.5, transfer: Any = None, max_transfer: int = 4000,
                 model_params: dict[str, Any] | None = None, estimate: bool = True, prior_margin: float = 3.0,
                 **kw: Any) -> None:
        super().__init__(space, **kw)
        if self.context is None:
            raise ValueError("the xgb tuner needs a TuneContext (workload, args, target) for its features")
        self.estimate = bool(estimate) and estimate_applies(self.context)
        margin = prior_margin if self.estimate else 0.0

        def model(m: float) -> CostModel:
            return CostModel(objective, num_rounds=num_rounds, seed=self.seed, params=model_params,
                             context=self.context, prior_margin=m)

        self.model = model(0.0)  # this task's measurements, learned from scratch
        self.guided = model(margin)  # the same, starting from the analytic estimate
        self.union = model(margin)  # this task's and the transferred records, when there are any
        self.source = model(margin)  # the transferred records alone: are they any guide here?
        self.source_trusted = True  # may the transfer expert lead a batch?
        self.source_foreign = False  # most transferred records were built for other vector registers
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
            self.source_foreign = _foreign_isa(records, self.context.target)
            self.source_trusted = not self.source_foreign
            self._dirty = True
            log.info("xgb tuner: %d transfer records from %d other task(s)", len(x), len(np.unique(grp)))

    def _fit(self) -> None:
        idx = list(self.results)
        x = self.fe.features(idx)
        g = np.array([self.results[i] for i in idx], dtype=np.float64)
        if len(idx) >= self.min_train:
            self.model.fit_arrays(x, g, np.zeros(len(idx), dtype=np.int64))
            if self.estimate:
                self.guided.fit_arrays(x, g, np.zeros(len(idx), dtype=np.int64))
        if self._src is not None:
            self.union.fit_arrays(np.concatenate([x, self._src[0]]), np.concatenate([g, self._src[1]]),
                                  np.concatenate([np.zeros(len(idx), dtype=np.int64), self._src[2]]))
            self._judge_source(x, g)
        self._dirty = False

    def _judge_source(self, x: np.ndarray, g: np.ndarray) -> None:
        """Trust the transferred records while a model of them alone orders this task's measured
        configs at least as well as the analytic estimate does (pairwise accuracy; random order
        without an estimate). Records of another machine can mislead (AVX-512 tiles on an AVX2
        host): the union model then cannot lead a batch, so its share stays small."""
        if len(g) < TRUST_MIN:
            return
        if not self.source.trained:
            self.source.fit_arrays(*self._src)
        mine, _ = ranking_quality(self.source.predict_features(x), g, ks=())
        ref = ranking_quality(prior_of(x), g, ks=())[0] if self.estimate else 0.5
        # Records of other vector registers must do clearly better than the estimate: their knob
        # values mean other tiles here (16 columns: one AVX-512 vector, two AVX2 ones), and every
        # slot they take is one the estimate's own walk does not get.
        need = ref + (FOREIGN_MARGIN if self.source_foreign else 0.0)
        trusted = not mine < need  # nan (every config measured alike): no evidence against it
        if trusted != self.source_trusted:
            log.info("xgb tuner: transferred records %s (pairwise accuracy on %d configs here %.2f, estimate %.2f)",
                     "trusted again" if trusted else "mislead here: their share stays small", len(g), mine, ref)
        self.source_trusted = trusted

    # --- search ----------------------------------------------------------------
    def _experts(self) -> list[tuple[str, Scorer | None]]:
        """Who ranks candidates (None: uniformly at random).

        * "estimate": the analytic estimate (FMA pipeline and memory traffic),
          then this task's model trained on top of it (its base margin).
        * "model": this task's model learned from scratch once it has
          ``min_train`` points; before that random search, and only when no
          other expert ranks.
        * "transfer": a model of this task's and the transferred records. Another
          shape can rank this one well (matmul 384 -> 512) or badly (conv2d 28
          wide -> 40 wide).
        """
        out: list[tuple[str, Scorer | None]] = []
        if self.estimate:
            if self.guided.trained:
                out.append(("estimate", self.guided.predict_features))
            else:
                out.append(("estimate", prior_of))  # ties (ESTIMATE_RESOLUTION) broken in _candidates
        if self.union.trained:
            out.append(("transfer", self.union.predict_features))
        # Untrained, the model expert is random search: it joins once it has learned
        # something, unless nothing else ranks.
        if self.model.trained or not out:
            scorer = self.model.predict_features if self.model.trained else None
            out.insert(1 if self.estimate else 0, ("model", scorer))
        return out

    def _shares(self, names: list[str], n: int) -> list[tuple[str, int]]:
        """Batch slots per expert, the leader's first. The leader is the expert
        whose last ``CREDIT_WINDOW`` measured picks averaged fastest (an average,
        not a best, so the leader's larger share does not entrench it); it gets
        the batch but one slot (two when there is one other) per other expert.
        Transferred records that mislead here (``_judge_source``), or are not yet
        trusted because they were built for other vector registers, cannot lead.
        Before every expert has a measured pick, equal shares (an untrusted
        transfer expert: the small one)."""
        if len(names) == 1:
            return [(names[0], n)]
        mine: dict[str, list[float]] = {e: [] for e in names}
        for i, e in self.picked_by.items():  # insertion order: oldest pick first
            if e in mine and i in self.results:
                mine[e].append(self.results[i])
        may_lead = [e for e in names if e != "transfer" or self.source_trusted] or names
        small = max(1, n // (4 * (len(names) - 1)))
        if any(not v for v in mine.values()):  # equal shares; untrusted records start small
            rest = [(e, small) for e in names if e not in may_lead]
            q, r = divmod(n - small * len(rest), len(may_lead))
            return [(e, q + (1 if k < r else 0)) for k, e in enumerate(may_lead)] + rest
        lead = max(may_lead, key=lambda e: float(np.mean(mine[e][-CREDIT_WINDOW:])))
        rest = [(e, small) for e in names if e != lead]
        return [(lead, max(0, n - small * len(rest)))] + rest

    def _propose(self, n: int) -> list[int]:
        if self._dirty and (len(self.results) >= self.min_train or self._src is not None):
            self._fit()
        experts = dict(self._experts())
        picks: list[int] = []
        for name, k in self._shares(list(experts), n):
            if k <= 0:
                continue
            scorer = experts[name]
            if scorer is None:
                mine = self.cands.sample(self.rng, k, self.visited | set(picks))
            else:
                # Annealing cost follows the share: the leader walks most chains.
                chains = max(8, -(-self.n_chains * k // n))
                cand, score = self._candidates(name, scorer, chains)
                keep = ~np.isin(cand, picks)
                if name == "estimate" and not self.guided.trained:
                    mine = self._level_top(cand[keep], score[keep], k)
                else:
                    mine = self._diverse_top(cand[keep], score[keep], k)
            self.picked_by.update((i, name) for i in mine)
            picks += mine
        n_rand = int(self.rng.binomial(n, self.eps))
        if n_rand:
            picks = picks[: n - n_rand]
            picks += self.cands.sample(self.rng, n_rand, self.visited | set(picks))
        return picks

    def _candidates(self, name: str, scorer: Scorer, chains: int) -> tuple[np.ndarray, np.ndarray]:
        ties = name == "estimate" and not self.guided.trained

        def score(idx: np.ndarray) -> np.ndarray:
            s = scorer(self.fe.features(idx.tolist()))
            return s + ESTIMATE_RESOLUTION * fixed_draw(idx, self.seed) if ties else s

        unvisited = len(self.cands) - len(self.visited & self._cand_set())
        if unvisited <= self.exhaustive_limit:
            rest = self.cands.remaining(self.visited)
            return rest, score(rest)
        return self._anneal(name, score, chains)

    def _anneal(self, name: str, score: Scorer, chains: int) -> tuple[np.ndarray, np.ndarray]:
        cur = self._chains.get(name, np.zeros(0, dtype=np.int64))[:chains]
        if len(cur) < chains:  # new chains start at random
            cur = np.concatenate([cur, np.asarray(self.cands.sample(self.rng, chains - len(cur), set()),
                                                  dtype=np.int64)])
        # Restart a quarter of the chains from the best measured configs: exploitation
        # around real evidence, while the other chains keep their own walk.
        top = sorted(self.results, key=lambda i: -self.results[i])[: max(1, chains // 4)]
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

    def _level_top(self, cand: np.ndarray, score: np.ndarray, n: int) -> list[int]:
        """The untrained estimate's picks: the first ``1 - LEVEL_FRACTION`` of them by score (its
        near-ties drawn at random), the rest one from each next distinct level of the estimate
        (its value in steps of ``ESTIMATE_RESOLUTION``). Configs the estimate cannot tell apart
        often share the trait it gets wrong, and a model trained on them alone cannot learn
        it: conv2d 512->512 on 7x7 outputs rates a hundred 1x7 tiles packed by 32 channels
        0.946 (measured 105-148 GFLOPS: the 590 KiB filter block falls out of L2 every row),
        the same tiles packed by 16 0.89-0.92 (190-215). With a quarter of the first batch on
        the next levels it held a 16-packed tile on 3 of 3 seeds (212-215 GFLOPS, against 148
        at best before); the replay sets' trials to 95% did not change."""
        if len(cand) == 0:
            return []
        order = np.argsort(-score, kind="stable")
        cand, score = cand[order], score[order]
        # the estimate's own value: the score less the near-tie draw _candidates added
        level = np.floor((score - ESTIMATE_RESOLUTION * fixed_draw(cand, self.seed)) / ESTIMATE_RESOLUTION + 1e-9)
        rows = _greedy_then(len(cand), n, n - int(round(n * LEVEL_FRACTION)),
                            lambda r, picked: level[r] not in {level[p] for p in picked})
        return [int(cand[r]) for r in rows]

    def _diverse_top(self, cand: np.ndarray, score: np.ndarray, n: int) -> list[int]:
        if len(cand) == 0:
            return []
        order = np.argsort(-score, kind="stable")[: max(20 * n, 256)]
        cand = cand[order]
        ch = self.cands.to_choices(cand)
        # The first picks are the model's best, near-duplicates or not (the good
        # configs of a space cluster: several of them are worth measuring); the
        # rest of the batch must differ from every pick in >= diversity knobs.
        rows = _greedy_then(len(cand), n, n - int(round(n * self.diverse_fraction)),
                            lambda r, picked: not picked or np.min((ch[picked] != ch[r]).sum(axis=1)) >= self.diversity)
        return [int(cand[r]) for r in rows]


def _greedy_then(count: int, n: int, greedy: int, admit: Callable[[int, list[int]], bool]) -> list[int]:
    """``n`` of the rows ``0..count-1`` (best first): the first ``greedy`` as they come, then the
    next ones ``admit(row, picked so far)`` accepts; short of ``n``, the rest by order."""
    picked: list[int] = []
    for r in range(count):
        if len(picked) == n:
            break
        if len(picked) < greedy or admit(r, picked):
            picked.append(r)
    if len(picked) < n:
        chosen = set(picked)
        picked += [r for r in range(count) if r not in chosen][: n - len(picked)]
    return picked


def fixed_draw(idx: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per config index, the same every time for one seed (annealing
    sees one score per config): splitmix64's finaliser over index + seed."""
    h = np.asarray(idx, dtype=np.uint64) + np.uint64((seed + 1) * 0x9E3779B97F4A7C15 % (1 << 64))
    for mul in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):  # uint64 arrays wrap: a hash
        h = (h ^ (h >> np.uint64(30))) * np.full(len(h), mul, dtype=np.uint64)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _foreign_isa(records: list[Any], target: str) -> bool:
    """Whether most records were built for vector registers other than ``target``'s (width or
    count): an AVX-512 log handed to an AVX2 task."""
    from farm.target import Target

    def regs(t: str) -> tuple[int, int] | None:
        try:
            tt = Target.parse(t)
            return tt.vector_bits, tt.num_vector_registers
        except FarmError:
            return None

    here = regs(target)
    memo: dict[str, tuple[int, int] | None] = {}
    other = sum(1 for r in records if memo.setdefault(r.target, regs(r.target)) != here)
    return other * 2 > len(records)


def estimate_applies(ctx: TuneContext) -> bool:
    """The estimate models a CPU core's SIMD pipeline and cache hierarchy: not GPUs (no vector
    lanes in the target). Memory-bound operators are covered (bytes per level over bandwidth)."""
    from farm.target import Target

    try:
        return Target.parse(ctx.target).vector_lanes_f32 > 1
    except FarmError as e:  # a target this host's LLVM cannot parse: no estimate
        log.debug("no estimate for %s: %s", ctx.target, e)
        return False
