"""The `farm` command line. Each command group lives in its own module that
exposes ``register(subparsers)``; handlers take the parsed args and return an
exit code. Logging handlers are configured here and nowhere else, and so is the
one place where exceptions become an error line (``farm.cli.errors``)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from farm.cli import errors

# Modules that add subcommands; each defines register(subparsers).
COMMAND_MODULES = [
    "farm.cli.tune",
    "farm.cli.log",
    "farm.cli.export",
    "farm.cli.compile",
    "farm.cli.measure",
    "farm.cli.serve",
    "farm.cli.devices",
]


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's namespace its full name, e.g. ``farm log best``, for error lines."""
    # argparse has no public walk over subparsers: its private action list is the only way.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(prog_name=sub.prog)  # the innermost parser's default wins
                _name_leaves(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="kernelfarm: cross-device kernel tuning")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv: debug, and the traceback of an error)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _name_leaves(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        # paramiko's transport thread logs a failed SSH connection with its traceback; the failure
        # reaches the user already, translated (DeviceUnreachable), on its device's line.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return errors.USAGE
    prog = getattr(args, "prog_name", "farm")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    except BrokenPipeError as e:
        if not errors.stdout_closed():  # a socket's EPIPE: an ordinary failure
            return errors.report(prog, e, args.verbose)
        errors.silence_stdout()  # our reader went away (| head): stop quietly
        return errors.PIPE_CLOSED
    except Exception as e:  # noqa: BLE001 - the CLI boundary: one clear line, the traceback only with -vv
        return errors.report(prog, e, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
