"""The CLI's one error surface: an exception becomes ``farm <cmd>: error: <line>`` and an exit code.

Exit codes (README "Exit codes"): 0 ok; 1 failure; 2 usage (argparse's own errors and
``UsageError``); 3 measured, but the outcome is not OK; 130 interrupted; 141 the reader of
our output went away (``farm log show ... | head``), which ends quietly like SIGPIPE would.
"""
from __future__ import annotations

import os
import select
import sys
import traceback
from typing import TextIO

from farm.errors import FarmError
from rpc.errors import MeasurementFailed, RpcError

OK, FAILURE, USAGE, NOT_OK = 0, 1, 2, 3
INTERRUPTED, PIPE_CLOSED = 130, 141

# What the project raises on purpose, plus the OS's own errors (files, sockets): one line each.
EXPECTED: tuple[type[BaseException], ...] = (FarmError, RpcError, OSError, ValueError)


class UsageError(FarmError, ValueError):
    """The command line asks for something that cannot be: a missing or conflicting option (exit 2)."""


class NoResult(FarmError):
    """The command ran, but found nothing to report (an empty match in a log): exit 1."""


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, UsageError):
        return USAGE
    if isinstance(exc, MeasurementFailed):
        return NOT_OK
    return FAILURE


def describe(exc: BaseException) -> str:
    """The message of ``exc`` without Python's decorations (``[Errno 2]``, an empty string)."""
    if isinstance(exc, OSError) and not isinstance(exc, (FarmError, RpcError)) and exc.strerror:
        # str() of an OSError reads "[Errno 2] No such file or directory: 'x'": say it plainly.
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


def format_error(prog: str, exc: BaseException, *, internal: bool = False) -> str:
    """``prog: error: first line``; further lines of a long message indented below it."""
    first, *rest = describe(exc).splitlines() or [""]
    if internal:  # not one of ours: name the type, it is what a bug report needs
        first = f"internal error ({type(exc).__name__}): {first} (run with -vv for the traceback)"
    return "\n".join([f"{prog}: error: {first}", *(f"  {line}" for line in rest)])


def report(prog: str, exc: BaseException, verbose: int, stream: TextIO | None = None) -> int:
    """Write ``exc`` as the CLI's error line (after the traceback with -vv); return the exit code."""
    out = stream or sys.stderr
    if verbose >= 2:
        traceback.print_exception(exc, file=out)
    out.write(format_error(prog, exc, internal=not isinstance(exc, EXPECTED)) + "\n")
    out.flush()
    return exit_code(exc) if isinstance(exc, EXPECTED) else FAILURE


def stdout_closed() -> bool:
    """True when nobody reads our stdout any more (a pipe whose reader exited)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # The write end of a pipe with no reader polls as POLLERR: that tells the closed pipe
    # apart from an EPIPE raised by a socket somewhere inside the command.
    return any(ev & select.POLLERR for _, ev in poller.poll(0))


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
