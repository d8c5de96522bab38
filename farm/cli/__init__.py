"""The ``farm`` command: one module per command group, dispatched by ``farm.cli.main``."""
from farm.cli.main import main

__all__ = ["main"]
