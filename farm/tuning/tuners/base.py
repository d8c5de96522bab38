"""The tuner protocol and the candidate set tuners search.

A tuner proposes config indices, is told their GFLOPS, and never proposes a
config twice (nor one loaded from history). Configs are handled as *choice
vectors* (one option number per knob, mixed radix as ``ConfigSpace``) so
mutation and crossover are per knob.

``Candidates`` is either the whole space or a *pool* of indices: replay runs
restrict tuners to the configs a dataset actually measured. In a pool, a
mutated or crossed-over choice vector snaps to the nearest pool member
(Hamming distance over knobs, ties broken at random).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from farm.tuning.model import TuneContext

log = logging.getLogger(__name__)


class Candidates:
    """Where a tuner may look: ``space`` entirely, or only ``pool`` (replay)."""

    def __init__(self, space: Any, pool: Sequence[int] | None = None) -> None:
        self.space = space
        self.dims = np.asarray(space.dims(), dtype=np.int64)
        self.mul = np.concatenate([[1], np.cumprod(self.dims)[:-1]]).astype(np.int64)
        self.n_space = int(np.prod(self.dims))
        self.pool = None if pool is None else np.unique(np.asarray(list(pool), dtype=np.int64))
        if self.pool is not None and len(self.pool) and (self.pool[0] < 0 or self.pool[-1] >= self.n_space):
            raise ValueError(f"pool has indices outside the space (0..{self.n_space - 1})")
        self.pool_choices = None if self.pool is None else self.to_choices(self.pool)

    def __len__(self) -> int:
        return self.n_space if self.pool is None else len(self.pool)

    def to_choices(self, idx: np.ndarray) -> np.ndarray:
        return (np.asarray(idx, dtype=np.int64)[:, None] // self.mul[None, :]) % self.dims[None, :]

    def from_choices(self, ch: np.ndarray) -> np.ndarray:
        return (np.asarray(ch, dtype=np.int64) * self.mul[None, :]).sum(axis=1)

    def all(self) -> np.ndarray:
        return np.arange(self.n_space, dtype=np.int64) if self.pool is None else self.pool

    def remaining(self, visited: set[int]) -> np.ndarray:
        a = self.all()
        if not visited:
            return a
        return a[~np.isin(a, np.fromiter(visited, dtype=np.int64, count=len(visited)))]

    def sample(self, rng: np.random.Generator, k: int, visited: set[int]) -> list[int]:
        """Up to k distinct unvisited candidates, uniformly at random."""
        out: list[int] = []
        seen = set(visited)
        if len(self) - len(seen) > 4 * k and len(self) > 50_000:
            # Sparse visits in a big space: rejection sampling avoids listing the space.
            for _ in range(20):
                src = rng.integers(0, self.n_space, 4 * k) if self.pool is None else \
                    self.pool[rng.integers(0, len(self.pool), 4 * k)]
                for i in src.tolist():
                    if i not in seen:
                        seen.add(i)
                        out.append(i)
                        if len(out) == k:
                            return out
        rest = self.remaining(seen)
        if not len(rest):
            return out
        take = rng.choice(len(rest), size=min(k - len(out), len(rest)), replace=False)
        return out + [int(rest[t]) for t in take]

    def snap(self, ch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Choice vectors -> indices; in a pool, the nearest member of each."""
        if self.pool is None:
            return self.from_choices(ch)
        assert self.pool_choices is not None
        out = np.empty(len(ch), dtype=np.int64)
        for s in range(0, len(ch), 64):  # chunks keep the (n, pool, knobs) compare small
            c = ch[s:s + 64]
            dist = (c[:, None, :] != self.pool_choices[None, :, :]).sum(-1).astype(np.float64)
            dist += rng.random(dist.shape) * 0.5
            out[s:s + 64] = self.pool[np.argmin(dist, axis=1)]
        return out

    def mutate(self, idx: np.ndarray, rng: np.random.Generator, p: float = 0.0) -> np.ndarray:
        """Change one random knob of each config (plus each other knob with prob p)."""
        ch = self.to_choices(idx)
        n, d = ch.shape
        mask = rng.random((n, d)) < p
        live = np.flatnonzero(self.dims > 1)
        if len(live) == 0:
            return np.asarray(idx, dtype=np.int64)
        mask[np.arange(n), rng.choice(live, size=n)] = True
        new = rng.integers(0, 1 << 30, size=(n, d)) % self.dims[None, :]
        ch = np.where(mask, new, ch)
        return self.snap(ch, rng)


class Tuner:
    """Base class: bookkeeping of proposals, results, best and early stopping.

    Subclasses implement ``_propose(n)``; they may override ``_observed`` to
    update models and ``_transfer`` to use other tasks' records.
    """

    name = "base"

    def __init__(self, space: Any, *, seed: int = 0, context: TuneContext | None = None,
                 pool: Sequence[int] | None = None, early_stopping: int | None = None) -> None:
        self.space = space
        self.seed = seed
        self.context = context
        self.rng = np.random.default_rng(seed)
        self.cands = Candidates(space, pool)
        self.early_stopping = early_stopping
        self.visited: set[int] = set()  # proposed or measured: never proposed again
        self.results: dict[int, float] = {}
        self.best_index: int | None = None
        self.best_gflops = 0.0
        self.trials = 0
        # Machine identities whose records under the context's key are this task's own (None: the
        # context fingerprint's machine). A campaign whose key holds several machines says which.
        self.own_machines: set[str] | None = None
        self._since_best = 0

    # --- the API a campaign calls ---------------------------------------------
    def propose(self, n: int) -> list[int]:
        """Up to ``n`` new config indices, none proposed or measured before."""
        n = min(int(n), len(self.cands) - len(self.visited & self._cand_set()))
        if n <= 0:
            return []
        picked: list[int] = []
        for i in self._propose(n):
            i = int(i)
            if i not in self.visited:  # subclasses may over-propose; never repeat
                self.visited.add(i)
                picked.append(i)
                if len(picked) == n:
                    break
        if len(picked) < n:  # top up so a batch is never short while configs remain
            extra = self.cands.sample(self.rng, n - len(picked), self.visited)
            self.visited.update(extra)
            picked += extra
        return picked

    def observe(self, results: Iterable[tuple[int, float]]) -> None:
        """Measured (index, GFLOPS) pairs; 0.0 for a failed config."""
        new = []
        for idx, g in results:
            idx, g = int(idx), float(g) if g and g > 0 else 0.0
            self.visited.add(idx)
            self.trials += 1
            self.results[idx] = max(g, self.results.get(idx, 0.0))
            if g > self.best_gflops:
                self.best_gflops, self.best_index, self._since_best = g, idx, 0
            else:
                self._since_best += 1
            new.append((idx, g))
        if new:
            self._observed(new)

    def load_history(self, records: Iterable[Any]) -> int:
        """Resume or transfer from shared-log records. Records of this task count
        as measured (never proposed again); others go to ``_transfer``. Returns
        the number of this task's records loaded."""
        own: list[Any] = []
        other: list[Any] = []
        for r in records:
            (own if self._is_own(r) else other).append(r)
        pairs = []
        for r in own:
            idx = self.space.locate(r.config_index, r.knobs)
            if 0 <= idx < self.cands.n_space:
                pairs.append((idx, r.gflops if r.ok else 0.0))
        self.observe(pairs)
        if other:
            self._transfer(other)
        log.info("%s tuner: loaded %d records of this task, %d of others", self.name, len(own), len(other))
        return len(own)

    @property
    def done(self) -> bool:
        if len(self.visited & self._cand_set()) >= len(self.cands):
            return True
        return bool(self.early_stopping and self._since_best >= self.early_stopping)

    # --- for subclasses ---------------------------------------------------------
    def _propose(self, n: int) -> list[int]:
        raise NotImplementedError

    def _observed(self, results: list[tuple[int, float]]) -> None:
        pass

    def _transfer(self, records: list[Any]) -> None:
        pass

    def _is_own(self, r: Any) -> bool:
        """A record this task measured: same workload instance, device key and machine. A record of
        another machine (its fingerprint's identity differs from this context's, both known) only
        ranks, as another device's would: its timings are not this machine's results."""
        from farm.records.identity import machine_identity

        c = self.context
        if c is None:
            return True
        if not (r.workload == c.workload and tuple(r.args) == tuple(c.args)
                and (not c.device_key or r.device_key == c.device_key)):
            return False
        theirs = machine_identity(getattr(r, "fingerprint", None))
        mine = self.own_machines if self.own_machines is not None else {machine_identity(c.fingerprint)}
        return not theirs or "" in mine or theirs in mine

    def _cand_set(self) -> set[int]:
        if self.cands.pool is None:
            return self.visited
        if not hasattr(self, "_pool_set"):
            self._pool_set = set(self.cands.pool.tolist())
        return self._pool_set
