"""The `farm` command line. Each command group lives in its own module that
exposes ``register(subparsers)``; handlers take the parsed args and return an
exit code. Logging handlers are configured here and nowhere else."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="kernelfarm: cross-device kernel tuning")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the CLI boundary: one clear line, no traceback, unless -vv
        from farm.errors import FarmError

        if args.verbose >= 2 or not isinstance(e, (FarmError, OSError)):
            raise
        print(f"farm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
