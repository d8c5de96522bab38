"""Tuners: random, grid, ga (baselines) and xgb (cost model + annealing).

Use :func:`farm.search.make_tuner`; the classes are here for subclassing.
"""
from .base import Candidates, Tuner
from .basic import GATuner, GridTuner, RandomTuner
from .xgb import XGBTuner

__all__ = ["Candidates", "GATuner", "GridTuner", "RandomTuner", "Tuner", "XGBTuner"]
