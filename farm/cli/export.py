"""`farm export` and `farm plot`: turn a shared log into a deployable kernel or a chart."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from farm.cli.args import existing_file, shape_text


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write the best kernel of a log as kernel.o + header + Python loader")
    p.add_argument("log", help="shared log file (JSON lines, .gz accepted)")
    p.add_argument("--workload", help="workload name (matmul) or instance (matmul(256,256,256))")
    _network_options(p, "export every tuned layer of this network (a preset such as resnet18, or a network file) "
                     "into DIR, one directory per kernel and network.json")
    p.add_argument("--device", help="device key the kernel was tuned on (needed if the log has several)")
    p.add_argument("--shape", type=shape_text,
                   help="comma-separated shape, e.g. 512,512,512 (needed if the log has several)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the export into")
    p.add_argument("--force", action="store_true", help="replace an earlier export in DIR")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the rebuilt kernel against the reference on this host")
    p.add_argument("--host", action="store_true",
                   help="export for this machine: refuse a record built for an ISA or CPU features it lacks")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_export)

    q = sub.add_parser("plot", help="plot best-so-far GFLOPS against trials, one line per task")
    q.add_argument("log", help="shared log file (JSON lines, .gz accepted)")
    q.add_argument("-o", "--output", required=True, metavar="FILE", help="image to write (.png, .svg, .pdf)")
    q.add_argument("--workload", help="only this workload name or instance")
    q.add_argument("--device", help="only this device key")
    q.add_argument("--title", default="", help="chart title")
    q.add_argument("--no-trials", action="store_true", help="draw only the best-so-far lines, not each trial")
    q.add_argument("--yscale", choices=["auto", "linear", "log"], default="auto",
                   help="GFLOPS axis; auto: log when the tasks' bests differ more than 20x")
    _network_options(q, "instead: the network's estimated end-to-end latency (sum of count x best latency so "
                     "far) against trials spent on its tasks (a preset such as resnet18, or a network file)")
    q.add_argument("--numpy", action="store_true", help="with --network: also time each layer's numpy baseline "
                   "here and draw their sum")
    q.set_defaults(func=cmd_plot)


def _network_options(p: Any, what: str) -> None:
    p.add_argument("--network", metavar="NAME|FILE", help=what)
    p.add_argument("--batch", type=int, default=1, help="with --network: the batch it was tuned at (default 1)")
    p.add_argument("--ops", help="with --network: only these operators, comma-separated (as a campaign's ops:)")


def _load_network(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The network --network names, at --batch, its layers resolved to workloads (and weights)."""
    from pathlib import Path

    from farm.campaign.config import resolve_network
    from farm.campaign.network import OPS, find_network, load_network, presets
    from farm.cli.errors import UsageError

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    path = find_network(args.network, Path.cwd())
    if not path.is_file():
        raise UsageError(f"--network: {path} does not exist (presets: {', '.join(presets())})")
    net = load_network(path, args.batch)
    if args.ops:
        ops = {o.strip() for o in args.ops.split(",") if o.strip()}
        if ops - set(OPS):
            raise UsageError(f"--ops: unknown operator(s) {', '.join(sorted(ops - set(OPS)))} "
                             f"(known: {', '.join(sorted(OPS))})")
        net = replace(net, layers=tuple(ly for ly in net.layers if ly.op in ops))
        if not net.layers:
            raise UsageError(f"--ops: no layer of {net.name} is one of {', '.join(sorted(ops))}")
    return resolve_network(net)


def cmd_export(args: argparse.Namespace) -> int:
    from farm.cli.errors import UsageError
    from farm.export.kernel import export_best
    from farm.workloads.registry import parse_shape

    if bool(args.workload) == bool(args.network):
        raise UsageError("name what to export: --workload (one kernel) or --network (every tuned layer)")
    if args.network:
        return _export_network(args)
    shape = parse_shape(args.shape) if args.shape else None
    with _for_this_host():
        res = export_best(existing_file(args.log), args.workload, args.output, device=args.device, shape=shape,
                          check=not args.no_check, force=args.force, host=args.host)
    _warn(args, res.warnings)
    r = res.record
    if args.json:
        print(json.dumps({"directory": str(res.directory), "files": [str(f) for f in res.files],
                          "workload": r.workload, "args": list(r.args), "device_key": r.device_key,
                          "config": r.config, "gflops": r.gflops, "hash": res.artifact.hash,
                          "checked": res.checked, "warnings": list(res.warnings)}))
        return 0
    check = "checked against the reference on this host" if res.checked else "not run here (other target)"
    print(f"{r.workload_id} on {r.device_key}: config {r.config_index}, {r.gflops:.2f} GFLOPS; {check}")
    for f in res.files:
        print(f"  {f}")
    print(f"use: python -c \"import sys; sys.path.insert(0, '{res.directory}'); import load_kernel; "
          f"k = load_kernel.load('{res.directory}')\"   or   cc app.c {res.directory}/kernel.o -lpthread -lm")
    return 0


@contextlib.contextmanager
def _for_this_host() -> Iterator[None]:
    """--host asked for what the record cannot be here: the command line's mistake (exit 2)."""
    from farm.cli.errors import UsageError
    from farm.export.kernel import NotForThisHost

    try:
        yield
    except NotForThisHost as e:
        raise UsageError(str(e)) from e


def _warn(args: argparse.Namespace, lines: list[str] | tuple[str, ...]) -> None:
    for line in lines:  # the library logged them (info); a person running the command reads them here
        print(f"{getattr(args, 'prog_name', 'farm export')}: warning: {line}", file=sys.stderr)


def _export_network(args: argparse.Namespace) -> int:
    from farm.cli.errors import UsageError
    from farm.export.kernel import NetworkLayer, export_network

    if args.shape:
        raise UsageError("--shape names one kernel; a network's shapes come from its file")
    net, tasks = _load_network(args)
    kernels = {(t.name, t.shape): (t.workload if t.kernel else None) for t in tasks}
    layers = [NetworkLayer(ly.label, ly.op, ly.count, ly.workload, ly.args, kernels.get((ly.workload, ly.args)))
              for ly in net.layers]
    with _for_this_host():
        meta = export_network(existing_file(args.log), net.name, layers, args.output, device=args.device,
                              check=not args.no_check, force=args.force, batch=net.batch, host=args.host)
    _warn(args, meta["warnings"])
    if args.json:
        print(json.dumps(meta))
        return 0
    for r in meta["layers"]:
        where = r.get("directory") or f"not exported: {r['not_exported']}"
        print(f"{r['layer']:<22} x{r['count']:<3} {r['workload'] or '-'}({','.join(map(str, r['args']))}): {where}")
    print(f"{meta['kernels']} kernels of {net.name} on {meta['device_key']} in {args.output} "
          f"(index: {args.output}/network.json); tuned layers sum {meta['tuned_sum_ms']:.3f} ms")
    return 0


def _plot_network(args: argparse.Namespace, records: list[Any]) -> int:
    from farm.export.plot import network_curve, plot_network

    net, tasks = _load_network(args)
    weights = {(t.name, t.shape): t.weight for t in tasks}
    curve = network_curve(records, weights, device=args.device, label=f"{net.name} batch {net.batch}")
    numpy_s = None
    if args.numpy:
        from farm.campaign.baselines import baseline_key, numpy_times

        times = numpy_times([net])
        numpy_s = sum(ly.count * times[(baseline_key(ly), ly.args)] for ly in net.layers)
    title = args.title or f"{net.name}, batch {net.batch}: estimated end-to-end latency"
    plot_network([curve], args.output, title=title, numpy_s=numpy_s)
    if curve.trials:
        print(f"{curve.label}: {curve.latency_s[-1] * 1e3:.3f} ms after {curve.trials[-1]} trials "
              f"(first estimate {curve.latency_s[0] * 1e3:.3f} ms after {curve.trials[0]})"
              + (f"; numpy {numpy_s * 1e3:.3f} ms" if numpy_s else ""))
    print(f"wrote {args.output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from farm.export.plot import plot_curves, tuning_curves
    from farm.log import load_log

    loaded = load_log(existing_file(args.log))
    if args.network:
        return _plot_network(args, loaded.records)
    curves = tuning_curves(loaded.records, workload=args.workload, device=args.device)
    plot_curves(curves, args.output, title=args.title, show_trials=not args.no_trials, yscale=args.yscale)
    for c in curves:
        print(f"{c.label}: {c.trials} trials, best {c.best[-1]:.2f} GFLOPS")
    print(f"wrote {args.output}")
    return 0
