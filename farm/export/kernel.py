"""Export the best kernel of a log as files an application can use.

``farm export`` picks the fastest successful record of one (workload, shape,
device) in a shared log, rebuilds that config for the target the record was
measured on, and writes into a directory:

- ``kernel.o``       the relocatable ELF object (ABI in :mod:`farm.records.artifact`)
- ``kernel.json``    the artifact header (args, shapes, dtypes, target, hash) plus
                     where it came from (config, GFLOPS, device key, log)
- ``kernel.h``       a C header for linking ``kernel.o`` into a program
- ``load_kernel.py`` a standalone loader (numpy + llvmlite, no kernelfarm)

The object is rebuilt rather than stored in the log because logs hold configs,
not code; building is deterministic for a given target string, and when the
target runs on this host the rebuilt kernel is checked against the workload's
reference before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import FarmError
from farm.log import LogRecord, load_log
from farm.log.query import best, matches
from farm.records.artifact import Artifact

log = logging.getLogger(__name__)

EXPORT_FORMAT = "kernelfarm-export"
EXPORT_VERSION = 1
OBJECT_FILE, META_FILE, HEADER_FILE, LOADER_FILE = "kernel.o", "kernel.json", "kernel.h", "load_kernel.py"
EXPORT_FILES = (OBJECT_FILE, META_FILE, HEADER_FILE, LOADER_FILE)
_LOADER_SOURCE = Path(__file__).with_name("loader.py")
_C_TYPES = {"float32": "float", "float64": "double", "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t",
            "int32": "int32_t", "int64": "int64_t", "float16": "uint16_t /* IEEE half */"}


class ExportError(FarmError):
    """Nothing (or nothing unambiguous) to export, or the rebuilt kernel is wrong."""


class NotForThisHost(ExportError):
    """An export for this host (``--host``) of a record built for an ISA or CPU features it lacks."""


@dataclass(frozen=True)
class ExportResult:
    """What ``export_best`` wrote, and from which record."""

    directory: Path
    record: LogRecord
    artifact: Artifact
    files: tuple[Path, ...]
    checked: bool
    warnings: tuple[str, ...] = ()  # e.g. the records chosen from came from several machines


def select_record(records: Sequence[LogRecord], workload: str, device: str | None = None,
                  shape: Sequence[int] | None = None, source: str = "log",
                  workload_hash: str | None = None) -> LogRecord:
    """The best record of one task. Refuses to guess between devices, shapes or two kernels of
    one name: their kernels are different objects, so the caller must name one."""
    pool = [r for r in records if r.ok and r.costs and
            matches(r, workload=workload, device=device, args=shape, workload_hash=workload_hash)]
    if not pool:
        seen = sorted({r.workload_id + " on " + r.device_key for r in records if r.ok})
        what = workload + (f" shape {list(shape)}" if shape else "") + (f" on {device}" if device else "")
        hint = f"; it has: {', '.join(seen[:8])}" if seen else "; it has no successful record"
        raise ExportError(f"{source}: no successful record of {what}{hint}")
    devices = sorted({r.device_key for r in pool})
    if len(devices) > 1:
        raise ExportError(f"{source}: {workload} was measured on several devices ({', '.join(devices)}); "
                          "pick one with --device")
    hashes = sorted({r.workload_hash for r in pool})
    if len(hashes) > 1:
        named = ", ".join(h or "built-in" for h in hashes)
        raise ExportError(f"{source}: several kernels are named {workload} ({named}); "
                          "name one as FILE.py:function or name@hash")
    shapes = sorted({r.args for r in pool})
    if len(shapes) > 1:
        listed = ", ".join(",".join(map(str, s)) for s in shapes)
        raise ExportError(f"{source}: {workload} has several shapes ({listed}); pick one with --shape")
    top = best(pool)
    assert top is not None  # pool is non-empty and every member qualifies
    return top


def require_host(record: LogRecord) -> None:
    """Raise :class:`NotForThisHost` unless code built for the record's target runs on this host."""
    from farm.export.portability import host_machine, lacks_on_host

    missing = lacks_on_host(record.target)
    if missing:
        raise NotForThisHost(
            f"{record.workload_label} on device key {record.device_key!r}, config {record.config_index} "
            f"{json.dumps(record.knobs, separators=(',', ':'))}: built for {record.target!r}, which needs "
            f"{', '.join(missing)}; this host ({host_machine().label}) lacks "
            f"{'it' if len(missing) == 1 else 'them'}. Export it without --host for a machine that has "
            f"{'it' if len(missing) == 1 else 'them'}, or tune on this host's own device key")


def rebuild(record: LogRecord, workload: Any = None) -> Any:
    """Compile the record's config for the record's target; returns a farm.build Module.
    ``workload``: the user kernel's Workload (a built-in is found by the record's name)."""
    from farm.workloads.registry import build_workload

    if "-mcpu=native" in record.target.split():
        # "native" means the machine running this, not the device that measured.
        log.warning("record target %r names -mcpu=native: rebuilding for this host's CPU", record.target)
    if record.workload_hash and workload is None:
        raise ExportError(f"{record.workload_label} is a user kernel: name it as FILE.py:function to rebuild it")
    wl = workload if workload is not None else record.workload
    mod = build_workload(wl, record.args, record.config, record.target)
    if record.workload_hash and mod.artifact.workload and mod.artifact.workload.get("hash") != record.workload_hash:
        raise ExportError(f"{workload.label}: its compute changed since the record was measured "
                          f"(hash {mod.artifact.workload.get('hash')} now, {record.workload_hash} then)")
    return mod


def check_on_host(artifact: Artifact, seed: int = 0, rtol: float = 1e-4, workload: Any = None) -> bool:
    """Run the kernel here against the workload reference (a user kernel's: its reference= or
    naive schedule); False if it cannot run here.
    Raises ExportError on a wrong answer: exporting it would ship a broken kernel."""
    from devices.check import builtin_outputs
    from farm.runtime.buffers import compare, seeded_inputs
    from farm.runtime.loader import LoadedKernel
    from farm.target import Target

    if artifact.kind != "object" or not Target.parse(artifact.target).runs_on_host():
        return False
    arrays = seeded_inputs(artifact.args, seed)
    if workload is not None and not workload.builtin:
        ins = [a for a, s in zip(arrays, artifact.args) if s.role == "in"]
        want = workload.reference(artifact.workload["args"], ins)
    else:
        want = builtin_outputs(artifact, arrays)
    if want is None:
        return False
    LoadedKernel(artifact)(*arrays)
    outs = [(a, s) for a, s in zip(arrays, artifact.args) if s.role == "out"]
    for (got, spec), ref in zip(outs, want):
        msg = compare(got, ref, rtol)
        if msg is not None:
            raise ExportError(f"rebuilt kernel gives a wrong answer for {spec.name}: {msg}")
    return True


def metadata(artifact: Artifact, record: LogRecord, log_path: str = "") -> dict[str, Any]:
    """kernel.json: the artifact header (the loader re-checks its hash) plus provenance."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "workload": {"name": record.workload, "args": list(record.args), "dtype": record.dtype,
                     **({"hash": record.workload_hash} if record.workload_hash else {})},
        "device_key": record.device_key,
        # which machine measured it (from its fingerprint) and which server, when the record says
        "measured_on": {**record.machine.to_json(), "device": record.device_name},
        "config": record.config,
        "gflops": record.gflops,
        "median_s": record.median_s,
        "measured_at": record.timestamp,
        "log": log_path,
        "exported_at": time.time(),
        "code_sha256": hashlib.sha256(artifact.code).hexdigest(),
        "files": {"object": OBJECT_FILE, "header": HEADER_FILE, "loader": LOADER_FILE},
        "link": f"cc app.c {OBJECT_FILE} -lpthread -lm",
        "artifact": artifact.header(),
    }


def _c_ident(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name).upper()
    return s if s and not s[0].isdigit() else "_" + s


def c_header(artifact: Artifact, record: LogRecord) -> str:
    """kernel.h: the three symbols of the object's ABI and the argument order."""
    guard = f"KF_{_c_ident(record.workload)}_{'_'.join(map(str, record.args))}_H"
    rows = []
    for i, a in enumerate(artifact.args):
        dims = "".join(f"[{d}]" for d in a.shape)
        rows.append(f" *   args[{i}]  {a.name:<8} {_C_TYPES.get(a.dtype, a.dtype):<8} {dims:<18} {a.role}")
    sizes = [f"#define KF_ARG_{_c_ident(a.name)} {i}\n"
             f"#define KF_{_c_ident(a.name)}_ELEMS {max(1, _prod(a.shape))}LL"
             for i, a in enumerate(artifact.args)]
    cfg = json.dumps(record.config, separators=(",", ":"))
    return f"""/* {record.workload_id}: tuned by kernelfarm on device key "{record.device_key}"
 * ({record.gflops:.2f} GFLOPS measured there). Generated by `farm export`; do not edit.
 *
 * Target:  {artifact.triple}, cpu {artifact.cpu} (it needs that CPU's features: "features" in {META_FILE})
 * Config:  {cfg}
 * Hash:    {artifact.hash}
 *
 * Arguments: args[i] points to a dense, C-contiguous buffer (64-byte aligned is best):
{chr(10).join(rows)}
 *
 * Link:    cc app.c {OBJECT_FILE} -lpthread -lm
 * Threads: kf_num_threads (default 1) sets how many threads parallel loops use;
 *          set it before calling. Each parallel region starts kf_num_threads-1 pthreads.
 * Several exported kernels in one program: rename the symbols of each object first,
 *          e.g. objcopy --prefix-symbols=mm_ {OBJECT_FILE} mm.o
 */
#ifndef {guard}
#define {guard}

#ifdef __cplusplus
extern "C" {{
#endif

/* Run the kernel once. */
void kf_main(void **args);
/* Seconds for n back-to-back calls of kf_main, clocked with CLOCK_MONOTONIC. */
double kf_time(void **args, long long n);
/* Threads for parallel loops. */
extern int kf_num_threads;

#define KF_NUM_ARGS {len(artifact.args)}
{chr(10).join(sizes)}
#define KF_FLOPS {artifact.flops:.17g}

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def write_export(out_dir: str | os.PathLike[str], artifact: Artifact, record: LogRecord, log_path: str = "",
                 force: bool = False) -> tuple[Path, ...]:
    """Write the four files; refuses to overwrite an earlier export unless ``force``."""
    if artifact.kind != "object":
        raise ExportError(f"only CPU objects can be exported for now; this kernel is {artifact.kind!r}")
    d = Path(out_dir)
    existing = [f for f in EXPORT_FILES if (d / f).exists()]
    if existing and not force:
        raise ExportError(f"{d} already holds an export ({', '.join(existing)}); use --force to replace it")
    d.mkdir(parents=True, exist_ok=True)
    contents: dict[str, bytes] = {
        OBJECT_FILE: artifact.code,
        META_FILE: (json.dumps(metadata(artifact, record, log_path), indent=2) + "\n").encode(),
        HEADER_FILE: c_header(artifact, record).encode(),
        LOADER_FILE: _LOADER_SOURCE.read_bytes(),
    }
    paths = []
    for name, data in contents.items():
        # Write then rename, so a reader never sees half a kernel.o next to a new kernel.json.
        tmp = d / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, d / name)
        paths.append(d / name)
    return tuple(paths)


def export_best(log_path: str | os.PathLike[str], workload: str, out_dir: str | os.PathLike[str],
                device: str | None = None, shape: Sequence[int] | None = None, check: bool = True,
                force: bool = False, host: bool = False) -> ExportResult:
    """Find the best record of a task in ``log_path``, rebuild it, check it, write it out.
    ``workload``: a name, ``name@hash``, or a user kernel as FILE.py:function / module:function.
    ``host``: the export is for this machine: refuse a record built for features it lacks."""
    from farm.export.portability import machine_warnings

    records = load_log(log_path).records
    wl = None
    wl_hash = None
    if ":" in workload:
        from farm.workloads.loader import load_kernel

        wl = load_kernel(workload)
        workload = wl.name
        if shape is not None:
            wl_hash = wl.compute_hash(shape)
    record = select_record(records, workload, device, shape, source=str(log_path), workload_hash=wl_hash)
    warnings = machine_warnings([r for r in records if r.ok and r.costs and r.task_key == record.task_key])
    if host:
        require_host(record)
    log.info("exporting %s on %s: config %d, %.2f GFLOPS", record.workload_label, record.device_key,
             record.config_index, record.gflops)
    art = rebuild(record, wl).artifact
    checked = check_on_host(art, workload=wl) if check else False
    files = write_export(out_dir, art, record, str(log_path), force=force)
    return ExportResult(Path(out_dir), record, art, files, checked, tuple(warnings))


NETWORK_FILE = "network.json"


@dataclass(frozen=True)
class NetworkLayer:
    """One layer of a network, as the caller resolved it: ``workload`` is the name its task's records
    carry ("" when nothing tunes it), ``kernel`` a user kernel's Workload (None for a built-in)."""

    label: str
    op: str
    count: int
    workload: str
    args: tuple[int, ...]
    kernel: Any = None


def export_network(log_path: str | os.PathLike[str], network: str, layers: Sequence[NetworkLayer],
                   out_dir: str | os.PathLike[str], device: str | None = None, check: bool = True,
                   force: bool = False, batch: int = 1, host: bool = False) -> dict[str, Any]:
    """Export every tuned layer of a network on one device key into ``out_dir``: one directory per
    distinct kernel (``<workload>_<shape>``, the four files of :func:`write_export`) and
    ``network.json``, which lists every layer, its count, its directory, or why it has none.
    ``host``: for this machine, as in :func:`export_best` (any layer it cannot run fails the export)."""
    from farm.export.portability import machine_warnings
    records = load_log(log_path).records
    tuned = {(ly.workload, ly.args) for ly in layers if ly.workload}
    devices = sorted({r.device_key for r in records if r.ok and (r.workload, r.args) in tuned})
    if device is None and len(devices) > 1:
        raise ExportError(f"{log_path}: {network} was tuned on several devices ({', '.join(devices)}); "
                          "pick one with --device")
    if device is None and not devices:
        raise ExportError(f"{log_path}: no successful record of any layer of {network}")
    device = device or devices[0]
    warnings = machine_warnings([r for r in records if r.ok and r.costs and r.device_key == device
                                 and (r.workload, r.args) in tuned])
    d = Path(out_dir)
    if (d / NETWORK_FILE).exists() and not force:
        raise ExportError(f"{d} already holds a network export ({NETWORK_FILE}); use --force to replace it")
    for ly in layers if host else ():  # every layer before any is written: half an export helps nobody
        if not ly.workload:
            continue
        try:
            rec = select_record(records, ly.workload, device, ly.args, str(log_path),
                                workload_hash=ly.kernel.compute_hash(ly.args) if ly.kernel is not None else None)
        except ExportError:  # not tuned on this device: network.json says so below
            continue
        require_host(rec)
    done: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    rows = []
    for ly in layers:
        row: dict[str, Any] = {"layer": ly.label, "op": ly.op, "count": ly.count, "workload": ly.workload,
                               "args": list(ly.args)}
        key = (ly.workload, ly.args)
        if not ly.workload:
            row["not_exported"] = "not tuned: no workload computes this operator"
        elif key in done:
            row.update(done[key])
        else:
            wl_hash = ly.kernel.compute_hash(ly.args) if ly.kernel is not None else None
            try:
                rec = select_record(records, ly.workload, device, ly.args, str(log_path), workload_hash=wl_hash)
            except ExportError as e:
                done[key] = {"not_exported": str(e)}
            else:
                sub = f"{ly.workload}_{'x'.join(map(str, ly.args))}"
                art = rebuild(rec, ly.kernel).artifact
                checked = check_on_host(art, workload=ly.kernel) if check else False
                write_export(d / sub, art, rec, str(log_path), force=force)
                done[key] = {"directory": sub, "config": rec.config, "median_ms": rec.median_s * 1e3,
                             "gflops": rec.gflops, "checked_here": checked}
            row.update(done[key])
        rows.append(row)
    exported = [r for r in rows if "directory" in r]
    meta = {"format": "kernelfarm-network-export", "version": EXPORT_VERSION, "network": network, "batch": batch,
            "device_key": device, "log": str(log_path), "exported_at": time.time(),
            "kernels": len({r["directory"] for r in exported}),
            # the tuned layers only: a layer without a kernel here runs elsewhere
            "tuned_sum_ms": sum(r["count"] * r["median_ms"] for r in exported), "layers": rows,
            "warnings": warnings}
    d.mkdir(parents=True, exist_ok=True)
    (d / NETWORK_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
