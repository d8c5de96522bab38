"""Finding a user's kernel: ``FILE.py:function`` (a path, relative to a base directory such as a
campaign YAML's) or ``module:function`` (importable), or a registered name such as ``matmul``.

The function may be decorated (``@farm.template`` / ``@farm.compute``) or plain: a plain one is
registered as the kind the caller names (a campaign entry's ``template:`` or ``compute:``), under
its own name. Every failure is one :class:`UserKernelError` naming the file and line.

A kernel file is imported as the module ``<its directory's name>.<its stem>``: Ray ships that
directory to build workers on other nodes (``runtime_env`` ``py_modules``), where the same module
name imports it.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, UserKernelError
from farm.workloads.registry import Workload, compute, get_workload, template

KINDS = ("template", "compute")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _import_error(e: BaseException, path: Path | None, what: str, where: str) -> UserKernelError:
    line = ""
    if isinstance(e, SyntaxError) and e.lineno:
        line = f"{e.filename or path}:{e.lineno}"
    else:
        frames = traceback.extract_tb(e.__traceback__)
        mine = [f for f in frames if path is not None and Path(f.filename).resolve() == path.resolve()]
        last = (mine or frames or [None])[-1]
        if last is not None:
            line = f"{last.filename}:{last.lineno}"
    at = f" ({line})" if line else ""
    return UserKernelError(f"{_at(where)}importing {what} failed: {type(e).__name__}: {e}{at}")


def _import_file(path: Path, where: str) -> Any:
    name = f"{path.parent.name}.{path.stem}" if path.parent.name.isidentifier() else path.stem
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == path.resolve():
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserKernelError(f"{_at(where)}{path} cannot be imported as Python")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        sys.modules.pop(name, None)
        raise _import_error(e, path, str(path), where) from e
    return mod


def _import_module(name: str, where: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name or name.startswith(f"{e.name}."):
            raise UserKernelError(f"{_at(where)}no module {name!r} (a kernel is FILE.py:function or "
                                  "module:function)") from e
        raise _import_error(e, None, f"module {name}", where) from e
    except Exception as e:
        raise _import_error(e, None, f"module {name}", where) from e


def _as_workload(obj: Any, func: str, kind: str | None, where: str, origin: str) -> Workload:
    if isinstance(obj, Workload):
        return obj
    if not inspect.isfunction(obj):
        raise UserKernelError(f"{_at(where)}{origin}:{func} is a {type(obj).__name__}, not a kernel function")
    first = next(iter(inspect.signature(obj).parameters), "")
    kind = kind or ("template" if first == "cfg" else "compute")
    return (template if kind == "template" else compute)(func)(obj)


def load_kernel(spec: str, base_dir: str | Path | None = None, kind: str | None = None, where: str = "") -> Workload:
    """The Workload ``spec`` names: ``FILE.py:function``, ``module:function`` or a registered name.

    ``base_dir`` anchors relative paths (a campaign YAML's directory); ``kind`` ("template" or
    "compute") is how to register a plain, undecorated function; ``where`` prefixes errors
    (e.g. ``campaign.yaml:12``)."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{_at(where)}kernel kind must be one of {KINDS}, got {kind!r}")
    if ":" not in spec:
        if spec.endswith(".py"):
            raise UserKernelError(f"{_at(where)}{spec!r} names a file but no function: write {spec}:FUNCTION")
        return get_workload(spec)
    target, _, func = spec.rpartition(":")
    if not func.isidentifier():
        raise UserKernelError(f"{_at(where)}{spec!r}: {func!r} is not a function name")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        if not path.is_file():
            raise UserKernelError(f"{_at(where)}kernel file {path} not found")
        mod, origin = _import_file(path.resolve(), where), str(path)
    else:
        mod, origin = _import_module(target, where), target
    if not hasattr(mod, func):
        found = sorted(n for n, v in vars(mod).items() if isinstance(v, Workload) or
                       (inspect.isfunction(v) and v.__module__ == mod.__name__ and not n.startswith("_")))
        raise UserKernelError(f"{_at(where)}{origin} has no function {func!r}"
                              + (f" (it defines: {', '.join(found)})" if found else ""))
    return _as_workload(getattr(mod, func), func, kind, where, origin)


def resolve_ref(ref: str | dict[str, str]) -> Workload:
    """On a build worker: the workload a task's ``Workload.ref()`` names (user code arrives by Ray's
    ``runtime_env``, importable under the same module name)."""
    if isinstance(ref, str):
        return get_workload(ref)
    mod = _import_module(ref["module"], f"build worker ({ref.get('name', '?')})")
    return _as_workload(getattr(mod, ref["func"]), ref["func"], ref.get("kind"), "", ref["module"])


def kernel_dirs(workloads: Iterable[Workload]) -> list[str]:
    """Directories to ship to build workers (Ray ``py_modules``) for these user kernels."""
    out: list[str] = []
    for wl in workloads:
        mod = sys.modules.get(wl.origin.get("module", "")) if not wl.builtin else None
        path = getattr(mod, "__file__", None) if mod is not None else None
        if path and "." in wl.origin["module"]:
            d = str(Path(path).resolve().parent)
            if d not in out:
                out.append(d)
    return out
