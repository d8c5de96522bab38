"""Where an exported kernel can run, and which machines measured the records it was chosen from.

An object built for CPU features this host lacks dies with SIGILL when it is called,
so ``farm export --host`` refuses it up front. What a target needs is its ``-mattr``
plus, on x86-64, the vector features its ``-mcpu`` implies (``-mcpu=skylake-avx512``
emits AVX-512 with no ``-mattr`` at all).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from farm.errors import TargetError
from farm.log import LogRecord, mixed_machine_warnings
from farm.records.identity import (
    Machine,
    missing_features,
    normalize_isa,
    present_features,
    target_features,
    target_isa,
)

log = logging.getLogger(__name__)


def host_fingerprint() -> dict[str, Any]:
    """This host as a fingerprint's identity fields (no probe: nothing here is timed)."""
    from farm.target import host_cpu, host_triple

    cpu, feats = host_cpu()
    return {"isa": normalize_isa(host_triple()), "cpu_name": cpu, "cpu_features": sorted(present_features(feats))}


def implied_features(target: str) -> frozenset[str]:
    """The vector features an x86-64 target's CPU implies beyond its ``-mattr`` (none elsewhere)."""
    from farm.target import Target

    try:
        t = Target.parse(target)
    except TargetError:  # the rebuild reports a bad target string; there is nothing to imply from
        return frozenset()
    if t.kind != "llvm" or t.arch != "x86_64" or t.cpu == "generic":
        return frozenset()
    return target_features(str(Target(t.kind, t.triple, t.cpu, "").with_isa_features()))


def lacks_on_host(target: str, host: dict[str, Any] | None = None) -> list[str]:
    """What code built for ``target`` needs that this host lacks: its ISA, or CPU features by name;
    empty when it runs here. ``host``: a fingerprint to judge against (default: this host)."""
    host = host if host is not None else host_fingerprint()
    isa, here = target_isa(target), normalize_isa(str(host.get("isa", "")))
    if isa == "nvptx64":
        return ["a CUDA GPU (nvptx64)"]
    if isa and isa != here:
        return [f"the {isa} ISA"]
    return missing_features(target_features(target) | implied_features(target), host.get("cpu_features") or ())


def machine_warnings(pool: Iterable[LogRecord]) -> list[str]:
    """Mixed-machine warnings for the records an export chose from; logged, and returned for the caller."""
    lines = mixed_machine_warnings(pool)
    for line in lines:
        log.info("%s", line)
    return lines


def host_machine() -> Machine:
    return Machine.of(host_fingerprint())
