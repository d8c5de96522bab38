"""Shared helpers of the CUDA tests."""
from __future__ import annotations

import random
from collections.abc import Sequence


def random_configs(name: str, shape: Sequence[int], target: str, n: int, seed: int) -> list[int]:
    """Config 0 plus ``n`` seeded random indices of the CUDA template's space."""
    from farm.workloads.registry import get_workload

    size = len(get_workload(name).space(shape, target))
    rng = random.Random(seed)
    return [0] + [rng.randrange(size) for _ in range(n)]
