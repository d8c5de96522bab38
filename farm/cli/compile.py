"""`farm show`, `farm workloads`, `farm run`: the compiler from the shell."""
from __future__ import annotations

import argparse
import json
from typing import Any

from farm.cli.args import existing_file, shape_text
from farm.cli.errors import UsageError

DEFAULT_TARGET = "llvm -mcpu=native"


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="print the lowered loop nest of a workload config")
    _workload_args(p)
    p.add_argument("--log", help="shared log, for --config best")
    p.add_argument("--device", help="device key whose best config to show (with --config best)")
    p.add_argument("--llvm", action="store_true", help="print the optimized LLVM IR instead")
    p.add_argument("--asm", action="store_true", help="print the target assembly instead")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("workloads", help="list registered workloads (or your kernels) and their config spaces")
    p.add_argument("kernels", nargs="*", metavar="KERNEL", help="your kernels as FILE.py:function (default: built-ins)")
    p.add_argument("--shape", type=shape_text, help="shape to size your kernels' spaces with")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workloads)

    p = sub.add_parser("run", help="build a workload config and time it on this machine (no farm)")
    _workload_args(p)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-repeat-ms", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=0, help="threads for parallel loops (0: all cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", help="a registered workload (see `farm workloads`), or your kernel as "
                                    "FILE.py:function or module:function")
    p.add_argument("--shape", required=True, type=shape_text, help="comma-separated shape values, e.g. 512,512,512")
    p.add_argument("--config", default="default", help="JSON config, an index, 'default' or 'best'")
    p.add_argument("--target", default=DEFAULT_TARGET, help="target string, e.g. 'llvm -mtriple=aarch64-linux-gnu'")


def resolve(args: argparse.Namespace) -> tuple[Any, tuple[int, ...], Any, Any]:
    from farm.target import Target
    from farm.workloads.loader import load_kernel
    from farm.workloads.registry import parse_shape, resolve_config

    wl = load_kernel(args.workload)
    shape = wl.check_args(parse_shape(args.shape))
    tgt = Target.parse(args.target)
    space = wl.space(shape, tgt)
    config: Any = args.config
    if config == "best":
        config = _best_from_log(args, wl.name, shape, wl.compute_hash(shape, tgt))
    return wl, shape, tgt, resolve_config(space, config)


def _best_from_log(args: argparse.Namespace, name: str, shape: tuple[int, ...], wl_hash: str = "") -> Any:
    from farm.errors import ConfigError
    from farm.log import best as best_of
    from farm.log import load_log

    if not getattr(args, "log", None):
        raise UsageError("--config best needs --log LOG")
    recs = load_log(existing_file(args.log)).records
    best = best_of(recs, workload=name, device=getattr(args, "device", None), args=list(shape), workload_hash=wl_hash)
    if best is None:
        raise ConfigError(f"{args.log}: no successful record of {name} {list(shape)}"
                          + (f" on {args.device}" if getattr(args, "device", None) else ""))
    return best.config


def cmd_show(args: argparse.Namespace) -> int:
    from farm.compiler.ir import func_str
    from farm.compiler.lowering import lower

    wl, shape, tgt, cfg = resolve(args)
    sch, tensors = wl.instantiate(shape, cfg, tgt)
    func = lower(sch, tensors, wl.name)
    if args.llvm or args.asm:
        from farm.compiler.codegen import assembly, llvm_module, optimize

        print(assembly(func, tgt) if args.asm else str(optimize(llvm_module(func, tgt), tgt)))
        return 0
    print(f"# {wl.name} {list(shape)} on {tgt.triple} ({tgt.cpu})")
    print(f"# config {json.dumps(cfg.to_json())}")
    print(func_str(func), end="")
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from farm.target import Target
    from farm.workloads.loader import load_kernel
    from farm.workloads.registry import list_workloads, parse_shape

    tgt = Target.parse(args.target)
    rows = []
    for wl in [load_kernel(k) for k in args.kernels] or list_workloads():
        shape = wl.check_args(parse_shape(args.shape)) if args.shape else wl.example
        rows.append({"name": wl.name, "kind": wl.kind, "params": list(wl.params), "example": list(shape),
                     "space_size": len(wl.space(shape, tgt)) if shape else None, "doc": wl.doc,
                     "hash": wl.compute_hash(shape, tgt) if shape else "", "source": wl.source})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'workload':<18} {'shape params':<28} {'example':<26} {'configs':>9}  description")
    for r in rows:
        size = r["space_size"] if r["space_size"] is not None else "(--shape)"
        print(f"{r['name']:<18} {','.join(r['params']):<28} {','.join(map(str, r['example'])):<26} "
              f"{size:>9}  {r['doc']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from devices.cpu import CpuBackend
    from farm.client.reference import workload_reference
    from farm.records.measure import RunOptions
    from farm.workloads.registry import build_workload

    wl, shape, tgt, cfg = resolve(args)
    if not tgt.runs_on_host():
        raise UsageError(f"target {tgt} does not run here; use `farm measure --tracker ...`")
    mod = build_workload(wl, shape, cfg, tgt)
    options = RunOptions(repeat=args.repeat, min_repeat_ms=args.min_repeat_ms, num_threads=args.threads)
    ref = workload_reference(wl, shape, mod.artifact, tgt, options)  # a user kernel's check (None: built-in)
    res = CpuBackend("local").run_job(mod.artifact.with_reference(ref), options, ref)
    out = {"workload": wl.name, "shape": list(shape), "config": cfg.to_json(), "outcome": res.outcome.value,
           "median_s": res.median_s if res.ok else None, "gflops": res.gflops, "build_s": mod.build_s,
           "checked": res.checked, "message": res.message}
    if args.json:
        print(json.dumps(out))
    else:
        ms = f"{res.median_s * 1e3:.4f} ms" if res.ok else "-"
        print(f"{wl.name} {list(shape)}: {res.outcome.value}  median {ms}  {res.gflops:.2f} GFLOPS  "
              f"(build {mod.build_s:.2f}s, checked={res.checked}) {res.message}")
    return 0 if res.ok else 1
