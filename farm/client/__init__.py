"""The laptop side of the farm: ``farm.connect(...)`` sessions that measure kernels on remote devices."""
