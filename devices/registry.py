"""``devices.yaml`` → frozen, typed device specs, validated once.

The file is composed with ``yaml.compose`` rather than loaded, so every node
keeps its line number: each error names ``file:line: field: message``. See
``configs/devices.yaml`` for a documented example. Layout::

    version: 1                 # optional
    defaults: {user: pi, ...}  # optional; fields every device inherits where they apply
    devices:
      - name: rpi4-a           # unique
        key: rpi4              # the tracker queue this device serves
        kind: ssh              # local | ssh | cuda
        target: llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon   # or auto
        host: 10.0.0.31        # ssh: host or ssh_config alias; port, user, key_file, ...
        servers: 1             # device servers to run on it

Local paths (``key_file``, ``known_hosts``, ``ssh_config_file``) are relative to
the YAML file's directory; remote ones (``workdir``) are left for the remote.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devices.targetspec import TargetSpec, TargetSyntaxError, parse_target
from farm.yamlconf import Ctx as _Ctx
from farm.yamlconf import LocatedConfigError
from farm.yamlconf import describe as _describe
from farm.yamlconf import join as _join
from farm.yamlconf import read_bool as _bool
from farm.yamlconf import read_choice as _choice
from farm.yamlconf import read_ident as _ident
from farm.yamlconf import read_int as _int
from farm.yamlconf import read_readable_file as _readable_file
from farm.yamlconf import read_seconds as _seconds
from farm.yamlconf import read_str as _str
from farm.yamlconf import unknown as _unknown

log = logging.getLogger(__name__)

KINDS = ("local", "ssh", "cuda")
# Registry kind -> device-server backend (``farm serve --kind``).
BACKEND_OF_KIND = {"local": "cpu", "ssh": "cpu", "cuda": "cuda"}
HOST_KEY_POLICIES = ("strict", "accept-new")
COMMON_FIELDS = ("name", "key", "kind", "target", "servers")
SSH_FIELDS = (
    "host", "port", "user", "key_file", "use_agent", "ssh_config", "ssh_config_file",
    "known_hosts", "host_key_policy", "python", "workdir", "connect_timeout",
)  # fmt: skip
CUDA_FIELDS = ("gpu",)
ALL_FIELDS = COMMON_FIELDS + SSH_FIELDS + CUDA_FIELDS
FIELDS_BY_KIND = {
    "local": frozenset(COMMON_FIELDS),
    "ssh": frozenset(COMMON_FIELDS + SSH_FIELDS),
    "cuda": frozenset(ALL_FIELDS),  # a CUDA box is local, or remote when it has a host
}
TOP_FIELDS = ("version", "defaults", "devices")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class DeviceConfigError(LocatedConfigError):
    """One problem in a devices file, located by file, line and field."""


@dataclass(frozen=True)
class SshSpec:
    """How to reach a remote device. ``host`` may be an ``ssh_config`` alias's HostName."""

    host: str | None
    port: int | None = None  # None: the ssh_config alias's Port, else 22
    user: str | None = None  # None: the alias's User, else the local user
    key_file: Path | None = None
    use_agent: bool = True
    ssh_config: str | None = None  # Host alias looked up in ssh_config_file
    ssh_config_file: Path | None = None
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    host_key_policy: str = "strict"
    python: str = "python3"  # remote command; may contain spaces (e.g. a wrapper)
    workdir: str = "~/.kernelfarm"
    connect_timeout: float = 15.0

    @property
    def display(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.host or self.ssh_config}:{self.port or 22}"


@dataclass(frozen=True)
class DeviceSpec:
    """One registered device; ``ssh`` is set for remote devices (kind ssh, remote cuda)."""

    name: str
    key: str
    kind: str
    target: TargetSpec
    servers: int = 1
    ssh: SshSpec | None = None
    gpu: int | None = None
    source: str = ""  # "file:line" of the entry, for messages

    @property
    def remote(self) -> bool:
        return self.ssh is not None

    @property
    def backend(self) -> str:
        """The device server's ``--kind``: the backend that runs this device's jobs."""
        return BACKEND_OF_KIND[self.kind]

    def server_names(self) -> list[str]:
        """One name per server process: the device's name, or name-0, name-1... for several."""
        return [self.name] if self.servers == 1 else [f"{self.name}-{i}" for i in range(self.servers)]


@dataclass(frozen=True)
class FleetSpec:
    """All devices of one file, in file order."""

    path: Path
    devices: tuple[DeviceSpec, ...]

    def get(self, name: str) -> DeviceSpec:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)


def _target(ctx: _Ctx, node: yaml.Node, field: str) -> TargetSpec:
    try:
        return parse_target(_str(ctx, node, field))
    except TargetSyntaxError as e:
        raise ctx.error(node, field, f"bad target: {e}") from None


READERS: dict[str, Callable[[_Ctx, yaml.Node, str], Any]] = {
    "name": _ident, "key": _ident, "kind": _choice(KINDS), "target": _target,
    "servers": _int(1, 256), "host": _str, "port": _int(1, 65535), "user": _str,
    "key_file": _readable_file, "use_agent": _bool, "ssh_config": _str,
    "ssh_config_file": _readable_file, "known_hosts": _readable_file,
    "host_key_policy": _choice(HOST_KEY_POLICIES), "python": _str, "workdir": _str,
    "connect_timeout": _seconds, "gpu": _int(0, 1023),
}  # fmt: skip


def _device(
    ctx: _Ctx, node: yaml.Node, index: int, defaults: dict[str, tuple[yaml.Node, yaml.Node, str]]
) -> DeviceSpec:
    where = f"devices[{index}]"
    own = ctx.mapping(node, where)
    for name, (knode, _) in own.items():
        if name not in READERS:
            raise _unknown(ctx, knode, _join(where, name), name, ALL_FIELDS)
    for req in ("name", "key", "kind"):
        if req not in own:
            raise ctx.error(node, _join(where, req), "missing required field")
    kind = READERS["kind"](ctx, own["kind"][1], _join(where, "kind"))
    allowed = FIELDS_BY_KIND[kind]
    for name, (knode, _) in own.items():
        if name not in allowed:
            raise ctx.error(knode, _join(where, name), f"not allowed for kind {kind!r}")
    # Defaults fill in what applies to this kind; they are reported at their own line.
    nodes = {k: (v, f"defaults.{k}") for k, (_, v, _s) in defaults.items() if k in allowed}
    nodes.update({k: (v, _join(where, k)) for k, (_, v) in own.items()})
    vals: dict[str, Any] = {k: READERS[k](ctx, vnode, field) for k, (vnode, field) in nodes.items()}
    target = vals.get("target") or parse_target("auto")
    remote = kind == "ssh" or (kind == "cuda" and ("host" in vals or "ssh_config" in vals))
    if kind == "cuda" and not target.auto and not target.is_gpu:
        raise ctx.error(nodes["target"][0], nodes["target"][1], "a cuda device needs an nvptx64 triple or auto")
    if kind != "cuda" and target.is_gpu:
        raise ctx.error(nodes["target"][0], nodes["target"][1], f"a GPU target on a {kind!r} device (use kind: cuda)")
    ssh = None
    if remote:
        if "host" not in vals and "ssh_config" not in vals:
            raise ctx.error(node, _join(where, "host"), "missing: an ssh device needs host or ssh_config")
        if "ssh_config_file" in vals and "ssh_config" not in vals:
            raise ctx.error(
                nodes["ssh_config_file"][0], nodes["ssh_config_file"][1], "given without ssh_config (the Host alias)"
            )
        ssh_kw = {k: vals[k] for k in SSH_FIELDS if k in vals}
        ssh_kw.setdefault("host", None)
        # With an explicit key file, the agent is only used when asked for.
        ssh_kw.setdefault("use_agent", "key_file" not in vals)
        ssh = SshSpec(**ssh_kw)
    elif kind == "cuda":
        for f in SSH_FIELDS:
            if f in own:
                raise ctx.error(own[f][0], _join(where, f), "ssh fields on a local cuda device need host or ssh_config")
    return DeviceSpec(
        name=vals["name"], key=vals["key"], kind=kind, target=target, servers=vals.get("servers", 1),
        ssh=ssh, gpu=vals.get("gpu", 0 if kind == "cuda" else None), source=f"{ctx.file}:{node.start_mark.line + 1}",
    )  # fmt: skip


def parse_fleet(text: str, path: str | Path = "<string>") -> FleetSpec:
    """Validate YAML ``text`` (read from ``path``) into a ``FleetSpec``."""
    ctx = _Ctx(Path(path), DeviceConfigError)
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise DeviceConfigError(
            ctx.file, (mark.line + 1) if mark else 1, "(yaml)", f"syntax error: {e.problem}"
        ) from None
    if not docs or docs[0] is None:
        raise DeviceConfigError(ctx.file, 1, "devices", "the file is empty; expected a 'devices:' list")
    if len(docs) > 1:
        raise ctx.error(docs[1], "(yaml)", "expected one YAML document, found several")
    top = ctx.mapping(docs[0], "(top level)")
    for name, (knode, _) in top.items():
        if name not in TOP_FIELDS:
            raise _unknown(ctx, knode, name, name, TOP_FIELDS)
    if "version" in top and ctx.value(top["version"][1], "version") != 1:
        raise ctx.error(
            top["version"][1], "version", f"unsupported version {_describe(ctx, top['version'][1])} (this farm reads 1)"
        )
    defaults: dict[str, tuple[yaml.Node, yaml.Node, str]] = {}
    if "defaults" in top:
        for name, (knode, vnode) in ctx.mapping(top["defaults"][1], "defaults").items():
            if name not in READERS or name in ("name", "kind"):
                allowed = tuple(f for f in ALL_FIELDS if f not in ("name", "kind"))
                raise _unknown(ctx, knode, f"defaults.{name}", name, allowed)
            READERS[name](ctx, vnode, f"defaults.{name}")  # report a bad default once, at its line
            defaults[name] = (knode, vnode, f"defaults.{name}")
    if "devices" not in top:
        raise ctx.error(docs[0], "devices", "missing required field (a list of devices)")
    seq = top["devices"][1]
    if not isinstance(seq, yaml.SequenceNode) or not seq.value:
        raise ctx.error(seq, "devices", f"expected a non-empty list of devices, got {_describe(ctx, seq)}")
    devices: list[DeviceSpec] = []
    first_line: dict[str, int] = {}
    for i, node in enumerate(seq.value):
        dev = _device(ctx, node, i, defaults)
        if dev.name in first_line:
            name_node = ctx.mapping(node, "")["name"][1]
            raise ctx.error(
                name_node, f"devices[{i}].name", f"duplicate name {dev.name!r} (first at line {first_line[dev.name]})"
            )
        first_line[dev.name] = node.start_mark.line + 1
        devices.append(dev)
    log.debug("%s: %d devices", ctx.file, len(devices))
    return FleetSpec(path=ctx.path, devices=tuple(devices))


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a devices file once; raise ``DeviceConfigError`` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceConfigError(str(p), 1, "(file)", f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_fleet(text, p)
