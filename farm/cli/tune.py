"""`farm tune CAMPAIGN`: run a tuning campaign (the embedded default with no addresses)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="run a tuning campaign from a YAML file")
    p.add_argument("campaign", help="campaign YAML, e.g. configs/campaigns/quickstart.yaml")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="use this farm (default: an embedded tracker + local device)")
    p.add_argument("--token-file", help="token for --tracker (default: $FARM_TOKEN)")
    p.add_argument("--trials", type=int, help="override the budget per task")
    p.add_argument("--log", help="override the log path ('tracker': the farm's shared log, with --tracker)")
    p.add_argument("--local-servers", type=int, default=1, help="device servers of the embedded farm")
    p.add_argument(
        "--build-cpus",
        type=int,
        help="CPUs of the local Ray (default: every core when builds and timing take "
        "turns, as on the embedded farm; cores - 1 otherwise)",
    )
    p.add_argument("--max-outage", type=float, default=300.0, metavar="SECONDS",
                   help="how long to keep re-dialling a lost tracker before giving up (default 300)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    p.add_argument("--no-progress", action="store_true", help="no live progress")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from farm.campaign.builds import init_ray
    from farm.campaign.config import load_campaign
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.embedded import EmbeddedFarm
    from farm.campaign.progress import Progress, results_table
    from farm.campaign.sinks import TRACKER_LOG, TrackerSink
    from farm.client.session import connect

    spec = load_campaign(args.campaign).with_overrides(trials=args.trials, log=args.log)
    shared_log = str(spec.log) == TRACKER_LOG
    if shared_log and not args.tracker:
        print("farm tune: error: log 'tracker' (the farm's shared log) needs --tracker HOST:PORT", file=sys.stderr)
        return 2
    farm: EmbeddedFarm | None = None
    fleet = None
    try:
        if args.tracker:
            from rpc.auth import load_token

            address, token = args.tracker, load_token(args.token_file)
        else:
            farm = EmbeddedFarm(key=spec.device_keys[0] if spec.device_keys == ("local",) else "local",
                                servers=args.local_servers)
            farm.start()
            address, token = farm.address, farm.token
            print(f"embedded farm: tracker {address}, {args.local_servers} local device server(s)", file=sys.stderr)
        if spec.devices_file is not None:
            fleet = _fleet_up(spec.devices_file, address, token)
        exclusive = spec.exclusive_timing if spec.exclusive_timing is not None else farm is not None
        build_cpus = args.build_cpus
        if build_cpus is None and exclusive and not args.ray_address:
            build_cpus = os.cpu_count() or 1  # builds never overlap timing: they may use every core
        resources = init_ray(args.ray_address, build_cpus)
        print(f"ray: {int(resources.get('CPU', 0))} CPUs for builds"
              + (f" at {args.ray_address}" if args.ray_address else " (local)"), file=sys.stderr)
        progress = None if args.no_progress else Progress()
        with connect(address, token=token) as session:
            # A restarted tracker lost our queued jobs: re-dial and resubmit (see campaign.link).
            runner: CampaignRunner | None = None
            # The runner re-dials a lost tracker: the sink follows its current session.
            sink = TrackerSink(lambda: runner.link.session if runner else session, [w.name for w in spec.workloads],
                               address, spill=f"runs/{spec.name}.unsent.jsonl") if shared_log else None
            # The embedded farm's device times on the cores the local Ray builds on.
            runner = CampaignRunner(spec, session, progress, reconnect=lambda: connect(address, token=token),
                                    max_outage_s=args.max_outage, sink=sink, exclusive_timing=exclusive)
            result = runner.run()
    finally:
        if fleet is not None:
            fleet.close()
        if farm is not None:
            farm.stop()
    print(results_table(result))
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _fleet_up(path: Any, address: str, token: bytes) -> Any:
    import os
    from pathlib import Path

    from devices.fleet.supervisor import Fleet
    from devices.registry import load_fleet

    state = Path(os.path.expanduser(os.environ.get("KF_STATE_DIR") or "~/.kernelfarm/fleet"))
    fleet = Fleet(load_fleet(path), address, token, state)
    res = fleet.up()
    for name, r in res.items():
        print(f"device {name}: {'up' if r.ok else 'FAILED'} {r.message}", file=sys.stderr)
    if res.failed and len(res.failed) == len(res):
        raise RuntimeError("no device of the campaign's fleet came up")
    return fleet
