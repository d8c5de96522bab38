"""Tuners: random, grid, ga (baselines) and xgb (cost model + annealing).

Use :func:`farm.search.make_tuner`; the classes are here for subclassing.
"""
from farm.tuning.tuners.base import Candidates, Tuner
from farm.tuning.tuners.basic import GATuner, GridTuner, RandomTuner
from farm.tuning.tuners.xgb import XGBTuner

__all__ = ["Candidates", "GATuner", "GridTuner", "RandomTuner", "Tuner", "XGBTuner"]
