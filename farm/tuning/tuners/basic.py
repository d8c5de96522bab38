"""Baseline tuners: random, grid, and a genetic algorithm (AutoTVM's GATuner shape)."""
from __future__ import annotations

from typing import Any

import numpy as np

from farm.tuning.tuners.base import Tuner


class RandomTuner(Tuner):
    """Uniform sampling without replacement."""

    name = "random"

    def _propose(self, n: int) -> list[int]:
        return self.cands.sample(self.rng, n, self.visited)


class GridTuner(Tuner):
    """Index order (the first knob varies fastest), skipping what was measured."""

    name = "grid"

    def __init__(self, space: Any, **kw: Any) -> None:
        super().__init__(space, **kw)
        self._order = self.cands.all()
        self._pos = 0

    def _propose(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n and self._pos < len(self._order):
            i = int(self._order[self._pos])
            self._pos += 1
            if i not in self.visited:
                out.append(i)
        return out


class GATuner(Tuner):
    """Genetic search over choice vectors.

    The population is the ``pop_size`` best measured configs; parents are drawn
    with probability proportional to GFLOPS, children take each knob from
    either parent and mutate each knob with ``mutation_prob``. Until a first
    population is measured, proposals are random.
    """

    name = "ga"

    def __init__(self, space: Any, pop_size: int = 64, mutation_prob: float = 0.1, **kw: Any) -> None:
        super().__init__(space, **kw)
        self.pop_size, self.mutation_prob = pop_size, mutation_prob

    def _propose(self, n: int) -> list[int]:
        measured = sorted(self.results.items(), key=lambda kv: -kv[1])
        if len(measured) < min(self.pop_size, 16):
            return self.cands.sample(self.rng, n, self.visited)
        pop = measured[: self.pop_size]
        idx = np.array([i for i, _ in pop], dtype=np.int64)
        fit = np.array([g for _, g in pop], dtype=np.float64)
        p = fit + 1e-3 * (fit.max() + 1e-9)  # failures keep a small chance: their neighbours may work
        p /= p.sum()
        ch = self.cands.to_choices(idx)
        out: list[int] = []
        seen = set(self.visited)
        for _ in range(8):  # a few generations' worth of tries before falling back to random
            k = 2 * (n - len(out))
            a, b = self.rng.choice(len(idx), size=k, p=p), self.rng.choice(len(idx), size=k, p=p)
            take = self.rng.random((k, ch.shape[1])) < 0.5
            child = np.where(take, ch[a], ch[b])
            mut = self.rng.random(child.shape) < self.mutation_prob
            child = np.where(mut, self.rng.integers(0, 1 << 30, child.shape) % self.cands.dims[None, :], child)
            for i in self.cands.snap(child, self.rng).tolist():
                if i not in seen:
                    seen.add(i)
                    out.append(i)
                    if len(out) == n:
                        return out
        return out + self.cands.sample(self.rng, n - len(out), seen)
