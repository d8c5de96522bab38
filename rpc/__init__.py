"""The wire: codec (frames), transport, tracker, device server, client.

Imports no numpy/llvmlite/xgboost at module level, so a tracker runs anywhere.
"""
