"""Campaign YAML → typed, validated spec (errors name file:line and field).

    name: quickstart
    log: runs/quickstart.jsonl        # relative to the directory `farm tune` runs in
    devices: ../devices.yaml          # optional: bring this fleet up first (relative to this file)
    device_keys: [local]              # queues to tune on; "local" is the embedded device
    tuner: xgb                        # random | grid | ga | xgb
    trials: 64                        # budget per (workload, device) task
    trials_total: 800                 # or: one budget per device key, shared by its tasks (the scheduler's)
    scheduler: gradient               # with trials_total: gradient (Ansor's) | round_robin
    warmup_trials: 4                  # with trials_total: each task's first, round-robin (default batch_size/2)
    batch_size: 8                     # candidates in flight per task
    early_stopping: 48                # stop a task after this many trials without a new best
    seed: 0
    priority: 0                       # higher runs first when campaigns share a farm
    timing: {number: 1, repeat: 3, min_repeat_ms: 20, timeout_s: 10}
    build_timeout_s: 60
    transfer: true                    # seed cost models from other tasks in the log
    exclusive_timing: auto            # no builds while a device times (auto: on for the embedded farm)
    workloads:
      - {name: matmul, shape: [256, 256, 256]}
      - {template: kernels/softmax.py:rowsoftmax, shape: [1024, 1000]}   # your own (path: from this file)
      - {compute: mypkg.ops:layernorm, shape: [512, 768]}                 # or an importable module
      - {network: resnet18, batch: 1}    # a preset of configs/networks/ (or a file): its layers, weighted
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from farm.records.measure import RunOptions
from farm.yamlconf import (
    Ctx,
    LocatedConfigError,
    compose,
    describe,
    read_bool,
    read_choice,
    read_ident,
    read_int,
    read_str,
    unknown,
)

TUNERS = ("random", "grid", "ga", "xgb")
TOP = ("name", "log", "devices", "device_keys", "tuner", "trials", "batch_size", "early_stopping", "seed",
       "priority", "timing", "build_timeout_s", "transfer", "exclusive_timing", "workloads", "target",
       "trials_total", "scheduler", "warmup_trials")
NETWORK_KEYS = ("network", "batch", "ops")
TIMING = ("number", "repeat", "min_repeat_ms", "cooldown_ms", "timeout_s", "check", "rtol")


class CampaignConfigError(LocatedConfigError):
    """A problem in a campaign file, located by file, line and field."""


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    shape: tuple[int, ...]
    source: str = ""
    kernel: str = ""  # the entry's FILE.py:function or module:function ("" for a built-in by name)
    workload: Any = field(default=None, compare=False, repr=False)  # the loaded farm.workloads Workload
    weight: float = field(default=1.0, compare=False)  # occurrences in the campaign's networks (1: an entry)

    def resolve(self) -> Any:
        """The Workload this entry tunes."""
        if self.workload is not None:
            return self.workload
        from farm.workloads.registry import get_workload

        return get_workload(self.name)


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    workloads: tuple[WorkloadSpec, ...]
    log: Path
    device_keys: tuple[str, ...] = ("local",)
    devices_file: Path | None = None
    tuner: str = "xgb"
    trials: int = 64
    batch_size: int = 8
    early_stopping: int | None = None
    seed: int = 0
    priority: int = 0
    timing: RunOptions = field(default_factory=lambda: RunOptions(repeat=3, min_repeat_ms=20, timeout_s=10))
    build_timeout_s: float = 60.0
    transfer: bool = True
    # True: builds and timing take turns (a device that shares its cores with the
    # builders times kernels against a busy core otherwise); None: decided by
    # `farm tune` - on for the embedded farm, off for a remote one.
    exclusive_timing: bool | None = None
    target: str | None = None  # override the target read from the device fingerprint
    path: Path | None = None
    trials_total: int | None = None  # one budget per device key, shared by its tasks (scheduler.py)
    scheduler: str = "gradient"
    warmup_trials: int | None = None
    networks: tuple[Any, ...] = ()  # network.NetworkSpec of the `network:` entries

    @property
    def warmup(self) -> int:
        return self.warmup_trials or max(1, self.batch_size // 2)

    def with_overrides(self, *, trials: int | None = None, log: str | None = None) -> CampaignSpec:
        out = self
        if trials is not None:
            if trials < 1:
                raise CampaignConfigError("--trials", 0, "trials", f"must be >= 1, got {trials}")
            # With trials_total, --trials is the budget per device key.
            out = replace(out, trials_total=trials) if out.trials_total else replace(out, trials=trials)
        if log is not None:
            out = replace(out, log=Path(log))
        return out


def _float(lo: float, hi: float) -> Any:
    def read(ctx: Ctx, node: yaml.Node, fld: str) -> float:
        val = ctx.value(node, fld) if isinstance(node, yaml.ScalarNode) else node
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not lo <= val <= hi:
            raise ctx.error(node, fld, f"expected a number in [{lo}, {hi}], got {describe(ctx, node)}")
        return float(val)
    return read


def _list(ctx: Ctx, node: yaml.Node, fld: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, fld, f"expected a list, got {describe(ctx, node)}")
    if not node.value:
        raise ctx.error(node, fld, "the list is empty")
    return list(node.value)


KERNEL_KEYS = ("name", "template", "compute")


def _kernel(key: str, text: str, base: Path, fail: Callable[[str, str], Exception]) -> tuple[Any, str]:
    """(Workload, FILE.py:function or "") of an entry's ``name:``/``template:``/``compute:``;
    ``fail(field, reason)`` makes the located error."""
    from farm.errors import ConfigError, UserKernelError
    from farm.workloads.loader import load_kernel
    from farm.workloads.registry import get_workload, list_workloads

    try:
        if key == "name":
            return get_workload(text), ""
        return load_kernel(text, base, kind=key), text
    except UserKernelError as e:
        raise fail(key, str(e)) from None
    except ConfigError:
        known = ", ".join(w.name for w in list_workloads())
        raise fail("name", f"unknown workload {text!r} (known: {known}; or your own kernel "
                   "as `template:`/`compute:` FILE.py:function)") from None


def _workload(ctx: Ctx, node: yaml.Node, n: int, base: Path) -> WorkloadSpec | Any:
    from farm.errors import ConfigError

    where = f"workloads[{n}]"
    m = ctx.mapping(node, where)
    if "network" in m:
        return _network(ctx, m, where, base)
    for k, (knode, _) in m.items():
        if k not in (*KERNEL_KEYS, "shape"):
            raise unknown(ctx, knode, f"{where}.{k}", k, (*KERNEL_KEYS, "shape", "network"))
    given = [k for k in KERNEL_KEYS if k in m]
    if not given:
        raise ctx.error(node, f"{where}.name", "missing: a built-in `name:`, your kernel as "
                        "`template: FILE.py:function` / `compute: FILE.py:function`, or a `network:`")
    if len(given) > 1:
        raise ctx.error(m[given[1]][0], f"{where}.{given[1]}", f"give one of {', '.join(KERNEL_KEYS)}, not both "
                        f"{given[0]} and {given[1]}")
    if "shape" not in m:
        raise ctx.error(node, f"{where}.shape", "missing (e.g. shape: [512, 512, 512])")
    key = given[0]
    knode = m[key][1]
    wl, kernel = _kernel(key, read_str(ctx, knode, f"{where}.{key}"), base,
                         lambda f, why: CampaignConfigError(ctx.file, knode.start_mark.line + 1, f"{where}.{f}", why))
    snode = m["shape"][1]
    shape = [read_int(1 if i >= len(wl.params) or wl.params[i] != "pad" else 0, 1 << 20)(ctx, x, f"{where}.shape[{i}]")
             for i, x in enumerate(_list(ctx, snode, f"{where}.shape"))]
    try:
        args = wl.check_args(shape)
    except ConfigError as e:
        raise ctx.error(snode, f"{where}.shape", f"{e} ({wl.label})" if kernel else str(e)) from None
    return WorkloadSpec(wl.name, args, f"{ctx.file}:{node.start_mark.line + 1}", kernel, wl)


def _network(ctx: Ctx, m: dict[str, tuple[yaml.Node, yaml.Node]], where: str, base: Path) -> Any:
    """A ``network:`` entry: its file parsed (errors located there), each tuned layer resolved to a
    workload; returns (NetworkSpec, [WorkloadSpec weighted by occurrences])."""
    from farm.campaign.network import OPS, find_network, load_network, presets

    for k, (knode, _) in m.items():
        if k not in NETWORK_KEYS:
            raise unknown(ctx, knode, f"{where}.{k}", k, NETWORK_KEYS)
    nnode = m["network"][1]
    path = find_network(read_str(ctx, nnode, f"{where}.network"), base)
    if not path.is_file():
        raise ctx.error(nnode, f"{where}.network", f"{path} does not exist (presets: {', '.join(presets())})")
    batch = read_int(1, 1 << 16)(ctx, m["batch"][1], f"{where}.batch") if "batch" in m else 1
    net = load_network(path, batch)
    if "ops" in m:
        ops = {read_choice(tuple(sorted(OPS)))(ctx, x, f"{where}.ops[{i}]")
               for i, x in enumerate(_list(ctx, m["ops"][1], f"{where}.ops"))}
        net = replace(net, layers=tuple(ly for ly in net.layers if ly.op in ops))
        if not net.layers:
            raise ctx.error(m["ops"][1], f"{where}.ops", f"no layer of {net.name} is one of these operators")
    return resolve_network(net)


def resolve_network(net: Any) -> tuple[Any, list[WorkloadSpec]]:
    """Each tuned layer of a network.NetworkSpec resolved to its workload (errors located in the
    network file): the spec with each layer's workload name, and the weighted tasks."""
    from farm.campaign.network import NetworkConfigError
    from farm.errors import ConfigError

    specs: dict[tuple[str, tuple[int, ...], str], WorkloadSpec] = {}
    layers = []
    for ly in net.layers:
        if not ly.kind:
            layers.append(ly)
            continue
        file, _, line = ly.where.rpartition(":")

        def fail(f: str, why: str, file: str = file, line: str = line, label: str = ly.label) -> Exception:
            return NetworkConfigError(file, int(line), f"{label}.{f}", why)

        wl, kernel = _kernel(ly.kind, ly.kernel, ly.base, fail)
        try:
            args = wl.check_args(ly.args)
        except ConfigError as e:
            raise fail("shape", str(e)) from None
        layers.append(replace(ly, workload=wl.name))
        k = (wl.name, args, kernel)
        old = specs.get(k)
        specs[k] = WorkloadSpec(wl.name, args, ly.where, kernel, wl, (old.weight if old else 0.0) + ly.count)
    return replace(net, layers=tuple(layers)), list(specs.values())


def parse_campaign(text: str, path: str | Path = "<string>") -> CampaignSpec:
    ctx = Ctx(Path(path), CampaignConfigError)
    root = compose(text, path, CampaignConfigError)
    if root is None:
        raise CampaignConfigError(str(path), 1, "workloads", "the file is empty; expected a campaign mapping")
    top = ctx.mapping(root, "(top level)")
    for k, (knode, _) in top.items():
        if k not in TOP:
            raise unknown(ctx, knode, k, k, TOP)
    if "workloads" not in top:
        raise ctx.error(root, "workloads", "missing: list the workloads and shapes to tune")
    v: dict[str, Any] = {}
    base = Path(path).parent

    def get(key: str, reader: Any) -> None:
        if key in top:
            v[key] = reader(ctx, top[key][1], key)

    get("name", read_ident)
    get("tuner", read_choice(TUNERS))
    get("trials", read_int(1, 1_000_000))
    get("trials_total", read_int(1, 100_000_000))
    get("scheduler", read_choice(("gradient", "round_robin")))
    get("warmup_trials", read_int(1, 1_000_000))
    get("batch_size", read_int(1, 4096))
    get("early_stopping", read_int(1, 1_000_000))
    get("seed", read_int(0, 2**31 - 1))
    get("priority", read_int(-1000, 1000))
    get("build_timeout_s", _float(0.1, 3600))
    get("transfer", read_bool)
    if "exclusive_timing" in top:
        node = top["exclusive_timing"][1]
        val = ctx.value(node, "exclusive_timing") if isinstance(node, yaml.ScalarNode) else node
        if val != "auto" and not isinstance(val, bool):
            raise ctx.error(node, "exclusive_timing", f"expected true, false or auto, got {describe(ctx, node)}")
        v["exclusive_timing"] = None if val == "auto" else val
    get("log", read_str)
    get("target", read_str)
    if "target" in v:
        from farm.errors import TargetError
        from farm.target import Target
        try:
            Target.parse(v["target"])
        except TargetError as e:
            raise ctx.error(top["target"][1], "target", str(e)) from None
    if "devices" in top:
        p = Path(read_str(ctx, top["devices"][1], "devices")).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ctx.error(top["devices"][1], "devices", f"{p} does not exist")
        v["devices_file"] = p
    if "device_keys" in top:
        v["device_keys"] = tuple(read_ident(ctx, x, f"device_keys[{i}]")
                                 for i, x in enumerate(_list(ctx, top["device_keys"][1], "device_keys")))
        if len(set(v["device_keys"])) != len(v["device_keys"]):
            raise ctx.error(top["device_keys"][1], "device_keys", "a key is listed twice")
    timing = RunOptions(repeat=3, min_repeat_ms=20, timeout_s=10)
    if "timing" in top:
        tm = ctx.mapping(top["timing"][1], "timing")
        kw: dict[str, Any] = {}
        readers = {"number": read_int(1, 1 << 20), "repeat": read_int(1, 1000), "min_repeat_ms": _float(0, 60_000),
                   "cooldown_ms": _float(0, 60_000), "timeout_s": _float(0.1, 3600), "check": read_bool,
                   "rtol": _float(1e-9, 1.0)}
        for k, (knode, vnode) in tm.items():
            if k not in TIMING:
                raise unknown(ctx, knode, f"timing.{k}", k, TIMING)
            kw[k] = readers[k](ctx, vnode, f"timing.{k}")
        timing = replace(timing, **kw)
    wls, networks = _entries(ctx, top["workloads"][1], base)
    if "trials_total" in v and "trials" in v:
        raise ctx.error(top["trials_total"][0], "trials_total", "give trials (per task) or trials_total "
                        "(per device key, shared by its tasks), not both")
    for k in ("scheduler", "warmup_trials"):
        if k in v and "trials_total" not in v:
            raise ctx.error(top[k][0], k, "only with trials_total (the budget the scheduler shares out)")
    name = v.get("name", Path(path).stem if str(path) != "<string>" else "campaign")
    return CampaignSpec(
        name=name, workloads=wls, log=Path(v.get("log", f"runs/{name}.jsonl")),
        device_keys=v.get("device_keys", ("local",)), devices_file=v.get("devices_file"),
        tuner=v.get("tuner", "xgb"), trials=v.get("trials", 64), batch_size=v.get("batch_size", 8),
        early_stopping=v.get("early_stopping"), seed=v.get("seed", 0), priority=v.get("priority", 0),
        timing=timing, build_timeout_s=v.get("build_timeout_s", 60.0), transfer=v.get("transfer", True),
        exclusive_timing=v.get("exclusive_timing"), target=v.get("target"), path=Path(path),
        trials_total=v.get("trials_total"), scheduler=v.get("scheduler", "gradient"),
        warmup_trials=v.get("warmup_trials"), networks=tuple(networks),
    )


def _entries(ctx: Ctx, node: yaml.Node, base: Path) -> tuple[tuple[WorkloadSpec, ...], list[Any]]:
    """The tasks of the ``workloads:`` list: entries in order, then each network's layers (a layer
    that is an entry's workload, or another network's, adds its occurrences to that task's weight)."""
    out: dict[tuple[str, tuple[int, ...]], WorkloadSpec] = {}
    networks = []
    nodes = _list(ctx, node, "workloads")
    parsed = [_workload(ctx, n, i, base) for i, n in enumerate(nodes)]
    for w, n in zip(parsed, nodes):
        if isinstance(w, WorkloadSpec):
            if (w.name, w.shape) in out:
                first = out[(w.name, w.shape)].source
                raise ctx.error(n, "workloads", f"{w.name} {list(w.shape)} is listed twice (first at {first}); "
                                "two kernels of one name need different names in a campaign")
            out[(w.name, w.shape)] = w
    for w in parsed:
        if isinstance(w, WorkloadSpec):
            continue
        net, specs = w
        networks.append(net)
        for sp in specs:
            old = out.get((sp.name, sp.shape))
            if old is not None and old.kernel != sp.kernel:
                raise ctx.error(node, "workloads", f"{sp.name} {list(sp.shape)} at {sp.source} is another kernel "
                                f"than the one at {old.source}; two kernels of one name need different names")
            out[(sp.name, sp.shape)] = replace(sp, weight=sp.weight + (old.weight if old else 0.0),
                                               source=old.source if old else sp.source)
    return tuple(out.values()), networks


def load_campaign(path: str | Path) -> CampaignSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise CampaignConfigError(str(p), 0, "(file)", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CampaignConfigError(str(p), 0, "(file)", "not a text file") from None
    return parse_campaign(text, p)
