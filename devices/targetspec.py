"""Syntax check of a device's target string, as written in ``devices.yaml``.

A target is ``auto`` (read from the device when it registers) or
``llvm [-mtriple=T] [-mcpu=C] [-mattr=+a,-b] [-device=D]``. Only the syntax and
the triple's architecture are checked here; which CPUs a triple accepts is the
compiler's business (LLVM merely warns about unknown CPU names).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

OPTIONS = ("mtriple", "mcpu", "mattr", "device")
_WORD = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FEATURE = re.compile(r"^[+-][A-Za-z0-9_.\-]+$")
_DEVICES = ("cpu", "cuda", "arm_cpu")


class TargetSyntaxError(ValueError):
    """The target string is malformed; the message says how."""


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target; ``triple`` is None for ``auto`` and for host-default llvm targets."""

    raw: str
    auto: bool
    triple: str | None = None
    cpu: str | None = None
    features: tuple[str, ...] = ()
    device: str | None = None

    @property
    def arch(self) -> str | None:
        return self.triple.split("-", 1)[0] if self.triple else None

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda" or (self.arch or "").startswith("nvptx")

    def __str__(self) -> str:
        return self.raw


def _known_arch(triple: str) -> str | None:
    """LLVM's target name for ``triple`` or None when no registered target matches."""
    import llvmlite.binding as llvm  # local: the registry is importable without LLVM

    llvm.initialize_all_targets()
    try:
        return str(llvm.Target.from_triple(triple).name)
    except RuntimeError:
        return None


def parse_target(raw: str) -> TargetSpec:
    """Parse and validate ``raw``; raise ``TargetSyntaxError`` naming the bad part."""
    text = raw.strip()
    if not text:
        raise TargetSyntaxError("empty target (use 'auto' or 'llvm -mtriple=...')")
    if text == "auto":
        return TargetSpec(raw=text, auto=True)
    head, *tokens = text.split()
    if head != "llvm":
        raise TargetSyntaxError(f"target must be 'auto' or start with 'llvm', got {head!r}")
    seen: dict[str, str] = {}
    for tok in tokens:
        if not tok.startswith("-") or "=" not in tok:
            raise TargetSyntaxError(f"option {tok!r} is not of the form -name=value")
        name, value = tok.lstrip("-").split("=", 1)
        if name not in OPTIONS:
            hint = difflib.get_close_matches(name, OPTIONS, n=1)
            more = f" (did you mean -{hint[0]}?)" if hint else f" (known: {', '.join('-' + o for o in OPTIONS)})"
            raise TargetSyntaxError(f"unknown target option -{name}{more}")
        if name in seen:
            raise TargetSyntaxError(f"option -{name} given twice")
        if not value:
            raise TargetSyntaxError(f"option -{name} has an empty value")
        seen[name] = value
    triple = seen.get("mtriple")
    if triple is not None:
        parts = triple.split("-")
        if len(parts) < 2 or not all(_WORD.match(p) for p in parts):
            raise TargetSyntaxError(f"malformed triple {triple!r} (expected arch-vendor-os[-env])")
        if _known_arch(triple) is None:
            raise TargetSyntaxError(f"LLVM knows no target for triple {triple!r} (unknown architecture {parts[0]!r})")
    cpu = seen.get("mcpu")
    if cpu is not None and not _WORD.match(cpu):
        raise TargetSyntaxError(f"malformed cpu name {cpu!r}")
    features: tuple[str, ...] = ()
    if "mattr" in seen:
        features = tuple(seen["mattr"].split(","))
        for feat in features:
            if not _FEATURE.match(feat):
                raise TargetSyntaxError(f"feature {feat!r} in -mattr must look like +name or -name")
    device = seen.get("device")
    if device is not None and device not in _DEVICES:
        raise TargetSyntaxError(f"unknown -device={device} (known: {', '.join(_DEVICES)})")
    return TargetSpec(raw=" ".join(text.split()), auto=False, triple=triple, cpu=cpu, features=features, device=device)
