"""`farm tune CAMPAIGN`: run a tuning campaign (the embedded default with no addresses)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any

from farm.cli.args import tracker_address
from farm.cli.errors import UsageError
from farm.errors import FarmError
from rpc.client import MAX_OUTAGE_S

log = logging.getLogger(__name__)


class RayUnavailable(FarmError):
    """Ray would not start here, or its cluster could not be joined (address, token, versions)."""


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="run a tuning campaign from a YAML file")
    p.add_argument("campaign", help="campaign YAML, e.g. configs/campaigns/quickstart.yaml")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    p.add_argument("--tracker", metavar="HOST:PORT", type=tracker_address,
                   help="use this farm (default: an embedded tracker + local device)")
    p.add_argument("--token-file", help="token for --tracker (default: $FARM_TOKEN)")
    p.add_argument("--trials", type=int, help="override the budget per task (per device key with trials_total)")
    p.add_argument("--log", help="override the log path ('tracker': the farm's shared log, with --tracker)")
    p.add_argument("--local-servers", type=int, default=1, help="device servers of the embedded farm")
    p.add_argument(
        "--build-cpus",
        type=int,
        help="CPUs of the local Ray (default: every core when builds and timing take "
        "turns, as on the embedded farm; cores - 1 otherwise)",
    )
    p.add_argument("--max-outage", type=float, default=MAX_OUTAGE_S, metavar="SECONDS",
                   help="how long to keep re-dialling a lost tracker before giving up (default 300)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    p.add_argument("--no-progress", action="store_true", help="no live progress")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from farm.campaign.config import load_campaign
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.progress import Progress, results_table
    from farm.campaign.report import CampaignReporter, compose
    from farm.campaign.sinks import TRACKER_LOG, TrackerSink
    from farm.client.session import connect

    spec = load_campaign(args.campaign).with_overrides(trials=args.trials, log=args.log)
    shared_log = str(spec.log) == TRACKER_LOG
    if shared_log and not args.tracker:
        raise UsageError("log 'tracker' (the farm's shared log) needs --tracker HOST:PORT")
    with contextlib.ExitStack() as stack:
        address, token, embedded = _farm(args, spec, stack)
        session = stack.enter_context(_connect(address, token))
        if spec.devices_file is not None:
            _fleet_up(spec.devices_file, address, token, stack)
        exclusive = spec.exclusive_timing if spec.exclusive_timing is not None else embedded
        _start_ray(args, exclusive, spec)
        progress = None if args.no_progress else Progress()
        # A restarted tracker lost our queued jobs: re-dial and resubmit (see campaign.link).
        runner: CampaignRunner | None = None
        # The runner re-dials a lost tracker: the sink follows its current session.
        sink = TrackerSink(lambda: runner.link.session if runner else session, [w.name for w in spec.workloads],
                           address, spill=f"runs/{spec.name}.unsent.jsonl") if shared_log else None
        # The tracker's live page shows the campaign: best effort, on the session the campaign holds.
        reporter = CampaignReporter(spec.name, lambda: runner.link.session if runner else session)
        stack.callback(reporter.close)
        # The embedded farm's device times on the cores the local Ray builds on.
        runner = CampaignRunner(spec, session, compose(progress, reporter),
                                reconnect=lambda: connect(address, token=token, max_outage_s=0),
                                max_outage_s=args.max_outage, sink=sink, exclusive_timing=exclusive)
        result = runner.run()
    print(results_table(result))
    if args.json:
        print(json.dumps(result.to_json()))
    # 3, as `farm measure`: it ran, but some task found no config that ran correctly.
    return 0 if all(t.ok for t in result.tasks) else 3


def _farm(args: argparse.Namespace, spec: Any, stack: contextlib.ExitStack) -> tuple[str, bytes, bool]:
    """(address, token, embedded?) of the farm to use: --tracker's, or an embedded one stopped with ``stack``."""
    if args.tracker:
        from rpc.auth import load_token

        return args.tracker, load_token(args.token_file), False
    from farm.campaign.embedded import EmbeddedFarm

    farm = EmbeddedFarm(key=spec.device_keys[0] if spec.device_keys == ("local",) else "local",
                        servers=args.local_servers)
    farm.start()
    stack.callback(farm.stop)
    print(f"embedded farm: tracker {farm.address}, {args.local_servers} local device server(s)", file=sys.stderr)
    return farm.address, farm.token, True


def _connect(address: str, token: bytes) -> Any:
    """A session with the farm, opened before Ray starts: a wrong token or address fails in a second."""
    from farm.client.session import connect
    from rpc.errors import AuthError

    try:
        # The campaign re-dials by itself (campaign.link): its session must report the outage.
        return connect(address, token=token, max_outage_s=0)
    except AuthError as e:  # the tracker's answer is deliberately bare: say which token to compare
        raise AuthError(f"tracker {address}: {e} (is $FARM_TOKEN / --token-file the tracker's token?)") from None


def _start_ray(args: argparse.Namespace, exclusive: bool, spec: Any) -> None:
    from farm.campaign.builds import init_ray
    from farm.workloads.loader import kernel_dirs

    build_cpus = args.build_cpus
    if build_cpus is None and exclusive and not args.ray_address:
        build_cpus = os.cpu_count() or 1  # builds never overlap timing: they may use every core
    if not args.ray_address and not os.environ.get("RAY_ADDRESS"):
        # A new local Ray turns token authentication on by default and warns about it at every
        # start; asking for that mode explicitly keeps it on and the warning away. A cluster we
        # join keeps whatever mode its operator chose.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        # The campaign's own kernels travel to build workers on every node through Ray's runtime_env.
        resources = init_ray(args.ray_address, build_cpus, kernel_dirs(w.workload for w in spec.workloads
                                                                     if w.workload is not None))
    except Exception as e:  # noqa: BLE001 - Ray's own errors (no cluster, auth, versions) end here as ours
        log.debug("ray start-up failed", exc_info=True)
        where = f"join Ray at {args.ray_address}" if args.ray_address else "start a local Ray"
        raise RayUnavailable(f"cannot {where}: {type(e).__name__}: {str(e).strip()[:500]}") from e
    print(f"ray: {int(resources.get('CPU', 0))} CPUs for builds"
          + (f" at {args.ray_address}" if args.ray_address else " (local)"), file=sys.stderr)


def _fleet_up(path: Any, address: str, token: bytes, stack: contextlib.ExitStack) -> None:
    from pathlib import Path

    from devices.fleet.supervisor import Fleet
    from devices.registry import load_fleet

    def show(ev: Any) -> None:  # each device's line as soon as it is up (or not)
        print(f"device {ev.name}: {'up' if ev.kind == 'up' else 'FAILED'} {ev.message}", file=sys.stderr, flush=True)

    state = Path(os.path.expanduser(os.environ.get("KF_STATE_DIR") or "~/.kernelfarm/fleet"))
    fleet = Fleet(load_fleet(path), address, token, state, on_event=show)
    stack.callback(fleet.close)  # whatever came up stops with the campaign, however it ends
    res = fleet.up()
    if res.failed and len(res.failed) == len(res):
        raise FarmError(f"no device of the campaign's fleet ({path}) came up")
