"""Tuning: features of a lowered nest, the XGBoost cost model, the tuners and dataset replay."""
