"""`farm tracker` and `farm serve`: the server-side commands live in ``rpc.cli`` so that a board,
installed without the tuning side, runs them as ``python -m rpc.cli serve``; ``farm`` dispatches there."""
from rpc.cli import register

__all__ = ["register"]
