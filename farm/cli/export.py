"""`farm export` and `farm plot`: turn a shared log into a deployable kernel or a chart."""
from __future__ import annotations

import argparse
import json
from typing import Any

from farm.cli.args import existing_file, shape_text


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write the best kernel of a log as kernel.o + header + Python loader")
    p.add_argument("log", help="shared log file (JSON lines, .gz accepted)")
    p.add_argument("--workload", required=True, help="workload name (matmul) or instance (matmul(256,256,256))")
    p.add_argument("--device", help="device key the kernel was tuned on (needed if the log has several)")
    p.add_argument("--shape", type=shape_text,
                   help="comma-separated shape, e.g. 512,512,512 (needed if the log has several)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the export into")
    p.add_argument("--force", action="store_true", help="replace an earlier export in DIR")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the rebuilt kernel against the reference on this host")
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
    q.set_defaults(func=cmd_plot)


def cmd_export(args: argparse.Namespace) -> int:
    from farm.export.kernel import export_best
    from farm.workloads.registry import parse_shape

    shape = parse_shape(args.shape) if args.shape else None
    res = export_best(existing_file(args.log), args.workload, args.output, device=args.device, shape=shape,
                      check=not args.no_check, force=args.force)
    r = res.record
    if args.json:
        print(json.dumps({"directory": str(res.directory), "files": [str(f) for f in res.files],
                          "workload": r.workload, "args": list(r.args), "device_key": r.device_key,
                          "config": r.config, "gflops": r.gflops, "hash": res.artifact.hash,
                          "checked": res.checked}))
        return 0
    check = "checked against the reference on this host" if res.checked else "not run here (other target)"
    print(f"{r.workload_id} on {r.device_key}: config {r.config_index}, {r.gflops:.2f} GFLOPS; {check}")
    for f in res.files:
        print(f"  {f}")
    print(f"use: python -c \"import sys; sys.path.insert(0, '{res.directory}'); import load_kernel; "
          f"k = load_kernel.load('{res.directory}')\"   or   cc app.c {res.directory}/kernel.o -lpthread -lm")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from farm.export.plot import plot_curves, tuning_curves
    from farm.log import load_log

    loaded = load_log(existing_file(args.log))
    curves = tuning_curves(loaded.records, workload=args.workload, device=args.device)
    plot_curves(curves, args.output, title=args.title, show_trials=not args.no_trials, yscale=args.yscale)
    for c in curves:
        print(f"{c.label}: {c.trials} trials, best {c.best[-1]:.2f} GFLOPS")
    print(f"wrote {args.output}")
    return 0
