"""farm devices up/down against a real tracker: local servers, boards over a real sshd,
and the emulated arm64 board under qemu. Every test checks that nothing is left running."""
from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path

import pytest

from devices.fleet.down import down, statuses
from devices.fleet.supervisor import Fleet, FleetResult
from devices.fleet.tunnel import ReverseForward
from devices.registry import FleetSpec, parse_fleet
from tests.support import procs
from tests.support.armroot import ArmRoot
from tests.support.fixtures import FLEET_MARK as MARK
from tests.support.sshd import SshEndpoint, free_port
from tests.support.tracker import TrackerProcess

pytestmark = pytest.mark.usefixtures("no_fleet_leaks")  # tests/support/fixtures.py


def board_yaml(ep: SshEndpoint, workdir: Path, python: str, name: str = "board", **extra: object) -> str:
    lines = [f"  - name: {name}", "    key: rpi4", "    kind: ssh", "    host: 127.0.0.1",
             f"    port: {extra.pop('port', ep.port)}", f"    user: {ep.user}", f"    key_file: {ep.key_file}",
             f"    known_hosts: {extra.pop('known_hosts', ep.known_hosts)}", f"    python: {python}",
             f"    workdir: {workdir}", "    connect_timeout: 10"]  # fmt: skip
    return "\n".join(lines + [f"    {k}: {v}" for k, v in extra.items()]) + "\n"


def bring_up(spec: FleetSpec, tracker: TrackerProcess, state: Path, timeout: float = 60) -> tuple[Fleet, FleetResult]:
    fleet = Fleet(spec, tracker.address, tracker.token, state, register_timeout=timeout)
    return fleet, fleet.up()


def test_local_device_up_and_down(tmp_path: Path, tracker: TrackerProcess) -> None:
    spec = parse_fleet("devices:\n  - {name: x86, key: x86, kind: local, servers: 2}\n", tmp_path / "f.yaml")
    fleet, result = bring_up(spec, tracker, tmp_path / "state")
    try:
        assert result.ok, result.failed
        assert result["x86"].servers == ("x86-0", "x86-1")
        assert result["x86"].fingerprint["isa"] == "x86_64"
        assert len(procs.find_marked(MARK)) == 4  # two launchers, two servers
        (status,) = statuses(tmp_path / "state")
        assert status["running"] and status["devices"]["x86"]["ok"]
        token = fleet.state_dir / "token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    finally:
        fleet.close()
    assert not procs.wait_gone(MARK)
    assert down(spec, tmp_path / "state").ok


@pytest.mark.sshd
def test_reverse_forward_passes_half_closes(sshd_endpoint: SshEndpoint) -> None:
    """The remote peer sends, shuts its write side, then reads the reply: it must arrive."""
    import paramiko

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):  # read to EOF: needs the forwarded half-close
                    data += chunk
                conn.sendall(b"got %d bytes" % len(data))

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        client = paramiko.SSHClient()
        client.load_host_keys(str(sshd_endpoint.known_hosts))
        client.connect(**sshd_endpoint.connect_kwargs(), look_for_keys=False, allow_agent=False)
        fwd = ReverseForward(client.get_transport(), srv.getsockname())
        try:
            port = fwd.open()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # the "board" side
                s.sendall(b"x" * 200_000)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            assert reply == b"got 200000 bytes"
        finally:
            fwd.close()
            client.close()
            t.join(5)


@pytest.mark.sshd
def test_failures_are_per_host(tmp_path: Path, tracker: TrackerProcess, sshd_endpoint: SshEndpoint) -> None:
    """Wrong host key, refused port, no python, no numpy, a crashing server: each its own
    error in the map, while the healthy local device comes up."""
    import sys

    wrong_known = tmp_path / "wrong_known_hosts"
    fake = "AAAAC3NzaC1lZDI1NTE5AAAAIBq6y6o7S1o2S4z1o3q4o5q6o7q8o9r0r1r2r3r4r5r6"
    wrong_known.write_text(f"[127.0.0.1]:{sshd_endpoint.port} ssh-ed25519 {fake}\n")
    crashing = tmp_path / "crashing-python"
    # Passes the probe and unpacks the wheel, but dies as soon as the server is started.
    crashing.write_text(
        f'#!/bin/sh\nif [ "$1 $2" = "-m devices.fleet.launch" ]; then echo "boom: no device here" >&2; exit 3; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    crashing.chmod(0o755)
    wd = tmp_path / "remote"
    text = "devices:\n  - {name: x86, key: x86, kind: local}\n"
    text += board_yaml(sshd_endpoint, wd, sys.executable, "hostkey", known_hosts=wrong_known)
    text += board_yaml(sshd_endpoint, wd, sys.executable, "refused", port=free_port())
    text += board_yaml(sshd_endpoint, wd, "/nonexistent/python3", "nopython")
    text += board_yaml(sshd_endpoint, wd, f"{sys.executable} -S", "nonumpy")
    text += board_yaml(sshd_endpoint, wd, str(crashing), "crash")
    spec = parse_fleet(text, tmp_path / "f.yaml")
    fleet, result = bring_up(spec, tracker, tmp_path / "state")
    try:
        assert result["x86"].ok, result["x86"]
        failed = result.failed
        assert set(failed) == {"hostkey", "refused", "nopython", "nonumpy", "crash"}
        assert failed["hostkey"].error_type == "HostKeyMismatch" and "host key mismatch" in failed["hostkey"].message
        assert failed["refused"].error_type == "DeviceUnreachable" and "refused" in failed["refused"].message.lower()
        assert failed["nopython"].error_type == "ProvisionError" and "not found" in failed["nopython"].message
        nonumpy = failed["nonumpy"].message
        assert failed["nonumpy"].error_type == "ProvisionError" and "numpy and llvmlite are missing" in nonumpy
        assert failed["crash"].error_type == "ProvisionError" and "boom: no device here" in failed["crash"].message
        for o in failed.values():
            assert o.message.splitlines()[0].startswith(o.name) or o.name in o.message
    finally:
        fleet.close()


@pytest.mark.sshd
@pytest.mark.qemu
def test_x86_and_emulated_arm_board_end_to_end(
    tmp_path: Path, tracker: TrackerProcess, sshd_endpoint: SshEndpoint, arm_root: ArmRoot
) -> None:
    from farm.client.session import connect, workload_job
    from farm.records.measure import RunOptions

    wd = tmp_path / "board-home"
    text = "devices:\n  - {name: x86, key: x86, kind: local}\n" + board_yaml(sshd_endpoint, wd, str(arm_root.python))
    spec = parse_fleet(text, tmp_path / "f.yaml")
    fleet, result = bring_up(spec, tracker, tmp_path / "state", timeout=180)
    try:
        assert result.ok, {n: o.message for n, o in result.failed.items()}
        assert result["x86"].fingerprint["isa"] == "x86_64"
        board_fp = result["board"].fingerprint
        assert board_fp["isa"] == "aarch64" and board_fp["emulated"] is True
        # The board's servers run under qemu, behind the SSH reverse tunnel.
        assert any("qemu-aarch64" in procs.cmdline(p) for p in procs.find_marked(MARK))
        # Re-provisioning the same build uploads nothing (the wheel hash is already there).
        assert fleet._running["board"].board.install(fleet._wheel) is False  # noqa: SLF001
        results = {}
        with connect(tracker.address, token=tracker.token) as session:
            for key in ("x86", "rpi4"):
                art, _ = workload_job("matmul", [32, 32, 32], None, session.target(key))
                results[key] = session.measure(art, key=key, options=RunOptions(timeout_s=120))
        for key, r in results.items():
            assert r.ok, (key, r.message)
    finally:
        fleet.close()
    stopped = down(spec, tmp_path / "state")
    assert stopped.ok, stopped.failed
