"""An emulated AArch64 board for tests: a Debian arm64 Python 3.11 run by qemu-user.

The root directory holds Debian's arm64 ``python3.11`` with its libraries
(fetched with ``apt-get download`` under a private ``APT_CONFIG`` and unpacked
with ``dpkg-deb -x``: no maintainer scripts run and the host's dpkg database is
never touched) plus numpy, llvmlite and pyyaml aarch64 wheels unzipped into its
dist-packages. A small shell wrapper runs::

    qemu-aarch64-static -L ROOT -0 WRAPPER ROOT/usr/bin/python3.11 ...

``-0 WRAPPER`` makes the guest's ``argv[0]`` (and so ``sys.executable``) the
wrapper itself, so ``subprocess.run([sys.executable, ...])`` inside the guest
goes back through qemu: this machine has no binfmt_misc registration.

The root is cached under ``<repo>/.cache/armroot-<key>`` (or ``$KF_ARMROOT``);
the key covers the wheel versions and this file's layout version, so changing
either builds a fresh root. Build it ahead of the tests with
``python -m tests.support.armroot build`` (``.ci/setup_arm_root.sh`` does).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Bump when the layout of the root changes, so old caches are not reused.
LAYOUT_VERSION = "3"
DEBIAN_PACKAGES = ("python3.11", "libstdc++6", "zlib1g")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
QEMU = "qemu-aarch64-static"
WRAPPER_NAME = "kf-python3"
DIST_PACKAGES = "usr/lib/python3/dist-packages"


class ArmRootError(RuntimeError):
    """The emulated root could not be built (no qemu, apt or pip failure)."""


def _pinned(dist: str, fallback: str) -> str:
    # Pin the guest's wheels to the host's versions: artifacts built by the host's
    # llvmlite then load with the same LLVM on the guest, and the key is stable.
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return fallback


def wheel_pins() -> dict[str, str]:
    return {
        "numpy": _pinned("numpy", "2.2.6"),
        "llvmlite": _pinned("llvmlite", "0.45.1"),
        "pyyaml": _pinned("PyYAML", "6.0.2"),
    }


def versions_key() -> str:
    pins = wheel_pins()
    text = f"layout={LAYOUT_VERSION};deb={','.join(DEBIAN_PACKAGES)};" + ";".join(
        f"{k}={v}" for k, v in sorted(pins.items())
    )
    return "py311-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def default_root() -> Path:
    override = os.environ.get("KF_ARMROOT")
    if override:
        return Path(override)
    return REPO_ROOT / ".cache" / f"armroot-{versions_key()}"


@dataclass(frozen=True)
class ArmRoot:
    """A built root: ``python`` is the wrapper to run as the board's Python."""

    root: Path
    python: Path

    def argv(self, *args: str) -> list[str]:
        return [str(self.python), *args]


def find_qemu() -> str | None:
    return shutil.which(QEMU)


def is_built(root: Path) -> bool:
    return (root / ".complete").is_file() and (root / WRAPPER_NAME).is_file()


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    log.debug("armroot: %s", " ".join(argv))
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ArmRootError(
            f"{argv[0]} failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc.stdout


def _write_apt_config(work: Path) -> dict[str, str]:
    """A private apt configuration: arm64 only, own state and cache, the host's sources."""
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d", "debs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    # An empty dpkg status makes the resolver compute the whole closure from nothing.
    (work / "state" / "status").write_text("")
    conf = work / "apt.conf"
    conf.write_text(
        "\n".join(
            [
                'APT::Architecture "arm64";',
                'APT::Architectures { "arm64"; };',
                'APT::Install-Recommends "false";',
                'APT::Get::Assume-Yes "true";',
                f'Dir::State "{work}/state";',
                f'Dir::State::status "{work}/state/status";',
                f'Dir::Cache "{work}/cache";',
                # Only the host's sources; its apt.conf.d, pins and main conf stay out.
                'Dir::Etc::sourcelist "/etc/apt/sources.list";',
                'Dir::Etc::sourceparts "/etc/apt/sources.list.d";',
                f'Dir::Etc::parts "{work}/etc/apt.conf.d";',
                f'Dir::Etc::preferencesparts "{work}/etc/preferences.d";',
                'Dir::Etc::main "/dev/null";',
                'Debug::NoLocking "true";',
                "",
            ]
        )
    )
    env = dict(os.environ)
    env["APT_CONFIG"] = str(conf)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def _resolve_closure(env: dict[str, str]) -> list[str]:
    """Ask apt's resolver (simulated install on an empty system) for the package closure."""
    out = _run(["apt-get", "install", "-s", "--no-install-recommends", *DEBIAN_PACKAGES], env=env)
    pkgs = []
    for line in out.splitlines():
        # "Inst libc6 (2.36-9+deb12u4 Debian:12.5/stable [arm64])"
        if line.startswith("Inst "):
            pkgs.append(line.split()[1])
    if "python3.11" not in {p.split(":")[0] for p in pkgs}:
        raise ArmRootError(f"apt resolved no python3.11 for arm64:\n{out[-2000:]}")
    return pkgs


def _fetch_debs(work: Path, env: dict[str, str]) -> list[Path]:
    apt_out = _run(["apt-get", "update"], env=env)
    log.debug("apt-get update: %s", apt_out[-500:])
    pkgs = _resolve_closure(env)
    # Skip what the guest never loads and that pulls in maintainer-script machinery.
    skip = {"tzdata", "debconf", "readline-common", "netbase", "perl-base", "dpkg", "install-info"}
    pkgs = [p for p in pkgs if p.split(":")[0] not in skip]
    log.info("armroot: downloading %d arm64 packages", len(pkgs))
    _run(["apt-get", "download", *[f"{p.split(':')[0]}:arm64" for p in pkgs]], env=env, cwd=work / "debs")
    debs = sorted((work / "debs").glob("*.deb"))
    if not debs:
        raise ArmRootError("apt-get download fetched nothing")
    return debs


def _fetch_wheels(work: Path) -> list[Path]:
    dest = work / "wheels"
    dest.mkdir(exist_ok=True)
    pins = wheel_pins()
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    for plat in WHEEL_PLATFORMS:
        argv += ["--platform", plat]
    argv += ["--python-version", "3.11", "--implementation", "cp", "-d", str(dest)]
    argv += [f"{name}=={ver}" for name, ver in pins.items()]
    _run(argv)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(pins):
        raise ArmRootError(f"expected {len(pins)} wheels, got {[w.name for w in wheels]}")
    return wheels


def _wrapper_text(root: Path, qemu: str) -> str:
    # "$0" is the wrapper's own path, so the guest's sys.executable runs qemu again.
    return (
        "#!/bin/sh\n"
        "# Runs the emulated arm64 Python of this root (generated by tests/support/armroot.py).\n"
        f'exec "{qemu}" -L "{root}" -0 "$0" "{root}/usr/bin/python3.11" "$@"\n'
    )


def _assemble(tmp_root: Path, final_root: Path, debs: list[Path], wheels: list[Path], qemu: str) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp_root)])
    site = tmp_root / DIST_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(site)
    # Zip extraction drops the executable bits; shared objects only need to be readable.
    wrapper = tmp_root / WRAPPER_NAME
    wrapper.write_text(_wrapper_text(final_root, qemu))
    wrapper.chmod(0o755)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_armroot(root: Path | None = None, *, install_qemu: bool = False) -> ArmRoot:
    """Return the cached root, building it first if needed (apt + pip, ~30 s)."""
    root = Path(root) if root is not None else default_root()
    qemu = find_qemu()
    if qemu is None and install_qemu:
        _run(["apt-get", "install", "-y", "--no-install-recommends", "qemu-user-static"])
        qemu = find_qemu()
    if qemu is None:
        raise ArmRootError(f"{QEMU} not found (apt-get install qemu-user-static)")
    with _locked(root.parent / f".{root.name}.lock"):
        if is_built(root):
            return ArmRoot(root, root / WRAPPER_NAME)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="armroot-work-", dir=root.parent) as tmp:
            work = Path(tmp)
            env = _write_apt_config(work / "apt")
            debs = _fetch_debs(work / "apt", env)
            wheels = _fetch_wheels(work)
            tmp_root = work / "root"
            tmp_root.mkdir()
            _assemble(tmp_root, root, debs, wheels, qemu)
            if root.exists():  # a half-built root from an interrupted run
                shutil.rmtree(root)
            tmp_root.rename(root)
        (root / ".complete").write_text(versions_key() + "\n")
        log.info("armroot: built %s in %.1f s", root, time.monotonic() - t0)
    return ArmRoot(root, root / WRAPPER_NAME)


def run_under_arm_python(
    code: str,
    *args: str,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
    check: bool = True,
    root: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the emulated arm64 Python; ``args`` become ``sys.argv[1:]``.

    The repository root is put on ``PYTHONPATH`` so the guest imports this
    checkout's ``farm``, ``rpc`` and ``devices`` (pure Python, arch-neutral).
    Host-compiled AArch64 objects are best handed over as files in ``args``.
    With ``check`` a non-zero exit raises ``ArmRootError`` carrying stdout and
    stderr. Expect ~3 s of start-up (importing numpy under qemu).
    """
    arm = ensure_armroot(root)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep guest .pyc out of the checkout
    if env:
        full_env.update(env)
    proc = subprocess.run(
        arm.argv("-c", code, *args),
        env=full_env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise ArmRootError(
            f"arm python exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.armroot")
    parser.add_argument("action", choices=["build", "path", "key", "check"])
    parser.add_argument("--install-qemu", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "key":
        print(versions_key())
        return 0
    if args.action == "path":
        print(default_root())
        return 0
    arm = ensure_armroot(install_qemu=args.install_qemu)
    print(arm.python)
    if args.action == "check":
        code = "import platform, numpy, llvmlite.binding; print(platform.machine(), numpy.__version__)"
        print(_run([str(arm.python), "-c", code]).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
