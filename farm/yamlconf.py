"""Located YAML config reading: every error names ``file:line: field: message``.

Files are composed with ``yaml.compose`` rather than loaded, so each node keeps
its line number. Shared by the devices registry and campaign files.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from farm.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NAME = NAME_RE


class LocatedConfigError(ConfigError):
    """One problem in a config file, located by file, line and field."""

    def __init__(self, file: str, line: int, field: str, reason: str) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, reason
        super().__init__(f"{file}:{line}: {field}: {reason}")


def compose(text: str, path: str | Path, error_cls: type[LocatedConfigError] = LocatedConfigError) -> yaml.Node | None:
    """The YAML node tree of ``text``; syntax errors located like every other error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.composer.ComposerError as e:
        mark = e.problem_mark or e.context_mark
        raise error_cls(str(path), (mark.line + 1) if mark else 1, "<file>", str(e.problem or e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise error_cls(str(path), (mark.line + 1) if mark else 1, "<file>",
                        f"not valid YAML: {getattr(e, 'problem', None) or e}") from None


class Ctx:
    """The file being read: builds located errors and converts scalar nodes."""

    def __init__(self, path: Path, error_cls: type[LocatedConfigError] = LocatedConfigError) -> None:
        self.path = path
        self.error_cls = error_cls
        self.file = str(path)
        self._loader = yaml.SafeLoader("")

    def error(self, node: yaml.Node | None, field: str, reason: str) -> LocatedConfigError:
        line = node.start_mark.line + 1 if node is not None else 1
        return self.error_cls(self.file, line, field, reason)

    def value(self, node: yaml.Node, field: str = "<value>") -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:  # e.g. an unknown tag (!!python/object): SafeLoader refuses it
            raise self.error(node, field, f"cannot read this value: {getattr(e, 'problem', None) or e}") from None

    def mapping(self, node: yaml.Node, field: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field, f"expected a mapping, got {describe(self, node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.error(knode, field, "keys must be plain names")
            key = str(knode.value)
            if key in out:
                first = out[key][0].start_mark.line + 1
                raise self.error(knode, join(field, key), f"given twice (first at line {first})")
            out[key] = (knode, vnode)
        return out

    def local_path(self, raw: str) -> Path:
        p = Path(os.path.expanduser(raw))
        return p if p.is_absolute() else (self.path.parent / p)


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def describe(ctx: Ctx, node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    val = ctx.value(node)
    return "nothing" if val is None else f"{type(val).__name__} {val!r}"


def unknown(
    ctx: Ctx, knode: yaml.Node, field: str, name: str, allowed: tuple[str, ...] | frozenset[str]
) -> LocatedConfigError:
    hint = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
    more = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(sorted(allowed))})"
    return ctx.error(knode, field, f"unknown field{more}")


# ---- typed field readers: each takes (ctx, value node, field path) ----------------

def read_str(ctx: Ctx, node: yaml.Node, field: str) -> str:
    val = ctx.value(node, field) if isinstance(node, yaml.ScalarNode) else node
    if not isinstance(val, str) or not val.strip():
        raise ctx.error(node, field, f"expected a non-empty string, got {describe(ctx, node)}")
    return val.strip()


def read_ident(ctx: Ctx, node: yaml.Node, field: str) -> str:
    val = read_str(ctx, node, field)
    if not _NAME.match(val):
        raise ctx.error(node, field, f"{val!r} must be letters, digits, '.', '_' or '-'")
    return val


def read_int(lo: int, hi: int) -> Callable[[Ctx, yaml.Node, str], int]:
    def read(ctx: Ctx, node: yaml.Node, field: str) -> int:
        val = ctx.value(node, field) if isinstance(node, yaml.ScalarNode) else node
        if isinstance(val, bool) or not isinstance(val, int):
            raise ctx.error(node, field, f"expected an integer, got {describe(ctx, node)}")
        if not lo <= val <= hi:
            raise ctx.error(node, field, f"{val} is out of range {lo}..{hi}")
        return val

    return read


def read_bool(ctx: Ctx, node: yaml.Node, field: str) -> bool:
    val = ctx.value(node, field) if isinstance(node, yaml.ScalarNode) else node
    if not isinstance(val, bool):
        raise ctx.error(node, field, f"expected true or false, got {describe(ctx, node)}")
    return val


def read_seconds(ctx: Ctx, node: yaml.Node, field: str) -> float:
    val = ctx.value(node, field) if isinstance(node, yaml.ScalarNode) else node
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 3600:
        raise ctx.error(node, field, f"expected seconds in (0, 3600], got {describe(ctx, node)}")
    return float(val)


def read_choice(options: tuple[str, ...]) -> Callable[[Ctx, yaml.Node, str], str]:
    def read(ctx: Ctx, node: yaml.Node, field: str) -> str:
        val = read_str(ctx, node, field)
        if val not in options:
            hint = difflib.get_close_matches(val, options, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ctx.error(node, field, f"unknown value {val!r} (one of: {', '.join(options)}){more}")
        return val

    return read


def read_readable_file(ctx: Ctx, node: yaml.Node, field: str) -> Path:
    path = ctx.local_path(read_str(ctx, node, field))
    if not path.is_file():
        raise ctx.error(node, field, f"{path} does not exist or is not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as e:
        raise ctx.error(node, field, f"{path} is not readable: {e.strerror}") from None
    return path


