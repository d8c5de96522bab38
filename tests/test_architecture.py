"""The walls between kernelfarm's rooms, checked by parsing every import statement.

Every import counts, the lazy ones inside functions included: a lazy import still makes one room
depend on another, it only delays the cost. The table ``ALLOWED`` below *is* the design: a new
arrow between rooms is a decision made here, not an accident found later. The ``farm`` facade
(``farm/__init__.py``, lazy attributes for users) is exempt; importing a name from it counts as
importing the module that name lives in.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "rpc", "devices")

# Rooms: farm's subpackages and shared top-level modules, rpc, devices and its fleet.
# Each room lists the module prefixes it may import (its own room is always allowed).
_RECORDS = ("farm.errors", "farm.records")
ALLOWED: dict[str, tuple[str, ...]] = {
    "farm.errors": (),
    "farm.records": ("farm.errors",),
    "farm.target": ("farm.errors",),
    "farm.yamlconf": ("farm.errors",),
    "farm.runtime": (*_RECORDS, "farm.target"),
    "farm.te": ("farm.errors",),
    "farm.compiler": (*_RECORDS, "farm.target", "farm.te", "farm.runtime"),
    "farm.workloads": (*_RECORDS, "farm.target", "farm.te", "farm.compiler", "farm.runtime"),
    "farm.log": _RECORDS,
    "farm.tuning": (*_RECORDS, "farm.target", "farm.te", "farm.compiler", "farm.workloads", "farm.log"),
    "farm.search": ("farm.tuning",),  # the documented path farm.search.make_tuner
    "farm.client": (*_RECORDS, "farm.target", "farm.te", "farm.compiler", "farm.runtime", "farm.workloads",
                    "farm.log", "rpc"),
    "farm.export": (*_RECORDS, "farm.target", "farm.te", "farm.compiler", "farm.runtime", "farm.workloads",
                    "farm.log", "devices.check"),
    "farm.campaign": (*_RECORDS, "farm.target", "farm.yamlconf", "farm.te", "farm.compiler", "farm.workloads",
                      "farm.log", "farm.tuning", "farm.client", "rpc"),
    "farm.cli": ("farm", "rpc", "devices"),  # the command line may reach every room
    "rpc": (*_RECORDS, "farm.log"),  # the tracker keeps the farm's shared log
    # Device backends: records, the runtime, target parsing, the numpy references, the YAML helper.
    "devices": (*_RECORDS, "farm.runtime", "farm.target", "farm.workloads.references", "farm.yamlconf"),
    # Bringing a fleet up talks to the tracker (is every server registered?) over rpc's client.
    "devices.fleet": ("farm.errors", "farm.yamlconf", "devices", "rpc"),
}

# Rooms that must never be reached, even transitively, from a room.
NEVER_REACHES: dict[str, tuple[str, ...]] = {
    "farm.te": ("rpc", "devices"),
    "farm.compiler": ("rpc", "devices"),
    "farm.workloads": ("rpc", "devices"),
    "rpc": ("farm.compiler", "farm.tuning", "farm.campaign", "farm.workloads", "farm.te"),
    "devices": ("farm.tuning", "farm.campaign", "farm.log", "farm.compiler", "farm.te"),
}

MAX_MODULE_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _facade_names() -> dict[str, str]:
    """``from farm import build``: the module each lazy facade name lives in."""
    tree = ast.parse((ROOT / "farm" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return {k: v[0] for k, v in ast.literal_eval(node.value).items()}
    return {}


def imports_of(mod: str, path: Path, known: Iterable[str], facade: Mapping[str, str]) -> set[str]:
    """Every project module ``mod`` imports, at any depth of the file (lazy imports too)."""
    known = set(known)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names = []
            for a in node.names:
                sub = f"{parent}.{a.name}"
                if sub in known:
                    names.append(sub)
                elif parent == "farm" and a.name in facade:
                    names.append(facade[a.name])
                else:
                    names.append(parent)
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in PACKAGES)
    out.discard(mod)
    return out


def room_of(mod: str) -> str:
    """The room a module belongs to: the longest ALLOWED key that prefixes it."""
    best = ""
    for room in ALLOWED:
        if (mod == room or mod.startswith(room + ".")) and len(room) > len(best):
            best = room
    return best or mod


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def wall_violations(deps: Mapping[str, set[str]], allowed: Mapping[str, tuple[str, ...]]) -> list[str]:
    """``importer -> imported`` for every import the table does not allow."""
    bad = []
    for mod, targets in sorted(deps.items()):
        room = room_of(mod)
        if mod == "farm" or room not in allowed:  # the facade
            continue
        for t in sorted(targets):
            # An allowed module's parent packages run on import too; that is implied, not an arrow.
            if _under(t, room) or any(_under(t, a) or _under(a, t) for a in allowed[room]):
                continue
            bad.append(f"{mod} -> {t}  (room {room} may import: {', '.join(allowed[room]) or 'nothing'})")
    return bad


def room_graph(deps: Mapping[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, targets in deps.items():
        if mod == "farm":
            continue
        src = room_of(mod)
        graph.setdefault(src, set())
        for t in targets:
            if t != "farm" and room_of(t) != src:
                graph[src].add(room_of(t))
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def reach(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.fixture(scope="module")
def deps() -> dict[str, set[str]]:
    mods = source_modules()
    facade = _facade_names()
    out = {m: imports_of(m, p, mods, facade) for m, p in mods.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    for targets in out.values():
        for t in list(targets):
            parts = t.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in mods)
    return out


def test_every_import_is_allowed_by_the_table(deps: dict[str, set[str]]) -> None:
    assert not wall_violations(deps, ALLOWED), "\n".join(wall_violations(deps, ALLOWED))


def test_every_module_has_a_room(deps: dict[str, set[str]]) -> None:
    homeless = [m for m in deps if m not in ("farm", "rpc", "devices") and room_of(m) not in ALLOWED]
    assert not homeless, f"modules outside every room of ALLOWED: {homeless}"


def test_no_cycle_between_rooms(deps: dict[str, set[str]]) -> None:
    assert find_cycles(room_graph(deps)) == []


@pytest.mark.parametrize("room", sorted(NEVER_REACHES))
def test_rooms_never_reach(deps: dict[str, set[str]], room: str) -> None:
    # Module by module: a room may import one light module of a package whose other modules are heavy.
    for mod in [m for m in deps if room_of(m) == room]:
        reached = reach(deps, mod)
        bad = sorted(r for r in reached if any(_under(r, f) for f in NEVER_REACHES[room]))
        assert not bad, f"{mod} reaches {bad}"


def test_modules_stay_small() -> None:
    big = {m: n for m, p in source_modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by job): {big}"


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = ("numpy", "llvmlite", "xgboost", "ray")


def test_rpc_imports_no_heavy_dependency() -> None:
    loaded = _loaded_after("import rpc.tracker, rpc.server, rpc.client, rpc.cli")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not [m for m in loaded if m.startswith(("farm.compiler", "farm.tuning", "farm.campaign", "farm.workloads"))]


def test_records_import_the_standard_library_only() -> None:
    loaded = _loaded_after("import farm.records.artifact, farm.records.measure")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_device_check_does_not_load_the_tuning_side() -> None:
    loaded = _loaded_after("import devices.cpu, devices.cuda, devices.registry")
    tuning = [m for m in loaded if m.startswith(("farm.tuning", "farm.campaign", "farm.log", "farm.compiler",
                                                 "farm.workloads.space", "farm.workloads.registry", "farm.te"))]
    assert not tuning
    assert not [m for m in loaded if m.split(".")[0] in ("xgboost", "ray")]


# -- controls: the checks themselves report what they should -------------------------------------


def test_control_a_cycle_is_reported() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_control_a_broken_wall_is_reported() -> None:
    deps = {"farm.compiler.builder": {"devices.cpu", "farm.te.schedule"}, "rpc.queue": {"farm.tuning.model"}}
    bad = wall_violations(deps, ALLOWED)
    assert len(bad) == 2
    assert bad[0].startswith("farm.compiler.builder -> devices.cpu")
    assert bad[1].startswith("rpc.queue -> farm.tuning.model")


def test_control_lazy_imports_are_seen(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from devices.cpu import CpuBackend\n    import rpc.client\n")
    assert imports_of("farm.compiler.mod", src, {"devices.cpu", "rpc.client"}, {}) == {"devices.cpu", "rpc.client"}
