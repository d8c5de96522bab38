"""Leaving the farm: tuned kernels exported for a device, their standalone loader, and plots."""
