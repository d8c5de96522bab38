"""Tuning campaigns: YAML campaigns driven by Ray over the farm (see driver.py)."""
