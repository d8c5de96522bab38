"""What a CPU device is, recorded at registration and stored with every measurement.

ISA and triple, CPU name and features as LLVM sees them, core count, cache
sizes, memory, OS and library versions. Under user-mode emulation (qemu) LLVM
reports the CPU as "generic" and /proc/cpuinfo describes the *host*; the
fingerprint says ``emulated: true`` then, so nobody compares those timings
with a real board's.
"""
from __future__ import annotations

import logging
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HOST_ARCH_WORDS = {"x86_64": ("x86_64", "amd64", "i686"), "aarch64": ("aarch64", "arm64"), "arm": ("arm",)}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_model() -> tuple[str, str]:
    """(model name, the architecture /proc/cpuinfo appears to describe)."""
    text = _read("/proc/cpuinfo")
    for key in ("model name", "Model", "Hardware", "CPU part"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            break
    model = m.group(1).strip() if m else ""
    if re.search(r"^flags\s*:.*\b(sse2|lm)\b", text, re.MULTILINE):
        arch = "x86_64"
    elif re.search(r"^Features\s*:", text, re.MULTILINE):
        arch = "aarch64" if "asimd" in text else "arm"
    else:
        arch = ""
    return model, arch


def _caches() -> dict[str, int]:
    """Cache sizes in bytes by level/type, from sysfs (cpu0)."""
    out: dict[str, int] = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, ctype, size = _read(f"{idx}/level").strip(), _read(f"{idx}/type").strip(), _read(f"{idx}/size").strip()
        m = re.match(r"(\d+)([KMG]?)", size)
        if not (level and m):
            continue
        mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(ctype, "")
        out[name] = int(m.group(1)) * mult
    return out


def _memory_bytes() -> int:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "llvmlite"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # a missing library is a fact about the device, not an error here
            out[mod] = ""
    try:
        from importlib.metadata import version

        out["kernelfarm"] = version("kernelfarm")
    except Exception:
        out["kernelfarm"] = ""
    return out


def cpu_fingerprint() -> dict[str, Any]:
    """Describe this process's CPU device (the device server's backend calls this)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    machine = platform.machine()
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    try:
        features = sorted(f for f, on in llvm.get_host_cpu_features().items() if on)
    except RuntimeError:  # LLVM cannot read them on some hosts (and under emulation)
        features = []
    model, cpuinfo_arch = _cpuinfo_model()
    emulated = bool(cpuinfo_arch) and machine not in _HOST_ARCH_WORDS.get(cpuinfo_arch, (cpuinfo_arch,))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {
        "isa": machine,
        "triple": triple,
        "cpu_name": cpu,
        "cpu_features": features,
        "cpu_model": "" if emulated else model,
        "emulated": emulated,
        "cores": cores,
        "caches": _caches(),
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()).strip(),
        "versions": _versions(),
        "executable": sys.executable,
    }
