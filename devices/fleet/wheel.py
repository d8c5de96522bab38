"""Build the device-side wheel of this checkout, deterministically.

A board runs a device server only: ``rpc``, the device backends and the few rooms of ``farm``
they import (records, errors, the runtime, target parsing, the numpy references), never the
compiler, tuning, campaign or log code (numpy and llvmlite it must already have). Zipping them ourselves, with fixed
timestamps and sorted entries, gives a wheel whose bytes depend only on the
sources: its hash says whether a board's copy is stale, and building it never
writes into the source tree (``pip wheel .`` would, racing other users of it).
The result is a valid ``py3-none-any`` wheel that ``pip install`` accepts too.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ("farm", "rpc", "devices")
# What of farm/ a device server imports (tests/test_architecture.py holds devices/ to these rooms).
FARM_ON_BOARDS = (
    "farm/__init__.py", "farm/errors.py", "farm/target.py", "farm/yamlconf.py",
    "farm/records/", "farm/runtime/", "farm/workloads/__init__.py", "farm/workloads/references.py",
)
DIST = "kernelfarm"
_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheel:
    """A built wheel: its file, and the sha256 of its bytes (the staleness key)."""

    path: Path
    sha256: str

    @property
    def tag(self) -> str:
        return self.sha256[:16]


def source_root() -> Path:
    """The directory holding the ``farm``, ``rpc`` and ``devices`` packages in use."""
    return Path(__file__).resolve().parents[2]


def _version(root: Path) -> str:
    try:
        import tomllib

        data = tomllib.loads((root / "pyproject.toml").read_text())
        return str(data["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "0.0.0"


def _files(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or "__pycache__" in rel or path.suffix in (".pyc", ".pyo"):
                continue
            if pkg == "farm" and not rel.startswith(FARM_ON_BOARDS):
                continue
            if path.suffix == ".py":
                out.append((rel, path.read_bytes()))
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, root: Path | None = None) -> Wheel:
    """Zip the device-side packages of ``root`` into ``out_dir``; reuse an identical file."""
    root = root or source_root()
    version = _version(root)
    info = f"{DIST}-{version}.dist-info"
    files = _files(root)
    files.append((f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n".encode()))
    files.append(
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: kernelfarm.devices.wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    record = "".join(f"{name},{_record_hash(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zi = zipfile.ZipInfo(name, _EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DIST}-{version}-py3-none-any.whl"
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
        log.info("built %s (%d files, sha256 %s)", path, len(files), sha[:16])
    return Wheel(path, sha)
