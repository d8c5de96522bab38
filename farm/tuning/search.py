"""Search: one entry point for every tuner.

    tuner = make_tuner("xgb", space, seed=0, context=TuneContext("matmul", (256, 256, 256)))
    tuner.load_history(load_log(path).records)   # resume + transfer
    while not tuner.done:
        batch = tuner.propose(n_free_devices)       # never a config already proposed or measured
        tuner.observe([(i, gflops_of(i)) for i in batch])   # 0.0 for failures

Options common to all tuners: ``pool`` (restrict to these indices, used by
replay), ``early_stopping`` (stop after that many trials without a new best).
``xgb`` also takes ``objective`` ("rank" | "reg"), ``transfer`` (shared-log
records of other shapes/devices), ``n_chains``, ``sa_steps``, ``eps``,
``min_train``, ``exhaustive_limit``, ``diversity``, ``num_rounds``, ``estimate``
(use the analytic pipeline estimate as an expert: it ranks the first batch and
is the base margin of a model trained on top of it; on by default, off by itself
for memory-bound operators and GPU targets), ``prior_margin`` (that margin's weight);
``ga`` takes ``pop_size`` and ``mutation_prob``.
"""
from __future__ import annotations

from typing import Any

from farm.tuning.model import TuneContext
from farm.tuning.tuners import GATuner, GridTuner, RandomTuner, Tuner, XGBTuner

TUNERS: dict[str, type[Tuner]] = {"random": RandomTuner, "grid": GridTuner, "ga": GATuner, "xgb": XGBTuner}


def make_tuner(name: str, space: Any, *, seed: int, context: TuneContext | None = None, **opts: Any) -> Tuner:
    """A tuner by name over ``space`` (a ConfigSpace)."""
    cls = TUNERS.get(name)
    if cls is None:
        raise ValueError(f"unknown tuner {name!r}; known: {', '.join(TUNERS)}")
    return cls(space, seed=seed, context=context, **opts)


__all__ = ["TUNERS", "TuneContext", "Tuner", "make_tuner"]
