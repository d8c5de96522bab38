"""Argument types shared by the command groups: a malformed value is a usage error (exit 2),
reported by argparse on its own line before anything starts."""
from __future__ import annotations

import argparse
import errno
import os


def tracker_address(text: str) -> str:
    """``HOST:PORT`` of a tracker, checked (not resolved) here; kept as the user wrote it."""
    from rpc.transport import parse_address

    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def shape_text(text: str) -> str:
    """Comma-separated non-negative integers (``512,512,512``); kept as text for the workload to check."""
    from farm.errors import ConfigError
    from farm.workloads.registry import parse_shape

    try:
        parse_shape(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def existing_file(path: str) -> str:
    """``path`` if it names a file; else the OSError a read would give (the log store reads a
    missing file as an empty log, which is right for a campaign and wrong for a query)."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    return path
