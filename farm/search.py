"""Documented import path: ``farm.search.make_tuner`` lives in ``farm.tuning.search``."""
from farm.tuning.search import *  # noqa: F401,F403
from farm.tuning.search import make_tuner  # noqa: F401
