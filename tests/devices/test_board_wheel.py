"""The board wheel holds what a device server runs, and nothing of the tuning side."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from devices.fleet.wheel import build_wheel


def test_board_wheel_has_no_tuning_side_and_serves_alone(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel.path).namelist()
    assert "rpc/cli.py" in names and "devices/cpu.py" in names and "devices/fleet/launch.py" in names
    assert "farm/runtime/loader.py" in names and "farm/workloads/references.py" in names
    for room in ("farm/compiler/", "farm/tuning/", "farm/campaign/", "farm/log/", "farm/cli/", "farm/te/",
                 "farm/workloads/registry.py", "farm/workloads/space.py"):
        assert not [n for n in names if n.startswith(room)], room
    site = tmp_path / "site"
    zipfile.ZipFile(wheel.path).extractall(site)
    # Only the wheel's packages on the path first: the board's imports must resolve inside it.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "import farm, rpc.cli, devices.cpu, devices.cuda, devices.fleet.launch; "
             "assert farm.__file__.startswith(sys.argv[1]), farm.__file__; "
             "rpc.cli.main(['serve', '--help'])")
    r = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--tracker" in r.stdout
