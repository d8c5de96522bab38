#!/usr/bin/env bash
# Installs what the emulated-ARM-board and sshd tests need, then builds (or reuses) the
# cached arm64 Python root under .cache/armroot-<key> (override with KF_ARMROOT).
# Idempotent; .ci/run calls it before the qemu/sshd test runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# sshd wants its privilege-separation directory even when run as a test's child.
mkdir -p /run/sshd

PY="${PYTHON:-python3}"
"$PY" -m tests.support.armroot check
