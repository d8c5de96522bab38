"""The documented exception tree of kernelfarm.

Dependencies' errors (llvmlite, paramiko, sockets) are translated into these
at the boundaries; callers classify by type, never by message text.
"""
from __future__ import annotations


class FarmError(Exception):
    """Base of every error kernelfarm raises on purpose."""


class ScheduleError(FarmError, ValueError):
    """A schedule primitive was applied wrongly (wrong axis, double split...)."""


class LowerError(FarmError):
    """The scheduled loop nest cannot be lowered (e.g. unsupported attach)."""


class CompileError(FarmError):
    """LLVM rejected the generated code or the target string is invalid."""


class TargetError(CompileError, ValueError):
    """A target string could not be parsed or names an unknown triple/cpu."""


class ArgumentError(FarmError, ValueError):
    """Arrays passed to a built kernel do not match its argument specs."""


class LoadError(FarmError):
    """An artifact could not be loaded on a device (hash, arch, truncated)."""


class ConfigError(FarmError, ValueError):
    """A YAML or JSON configuration is invalid; the message names where."""


class UserKernelError(ConfigError):
    """A user's template or compute definition failed; the message names the kernel and its line."""
