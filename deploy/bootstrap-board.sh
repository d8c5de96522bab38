#!/usr/bin/env bash
# Bootstrap a board (or any Linux host) as a kernelfarm device running under systemd.
#
#   sudo deploy/bootstrap-board.sh --key rpi4 --tracker head:9190 --token-file ./token \
#        kernelfarm-0.1.0-py3-none-any.whl
#   deploy/bootstrap-board.sh --dry-run --key rpi4 --tracker head:9190 kernelfarm-*.whl
#
# What it does, each step skipped when already done (safe to run again, e.g. to
# upgrade the wheel):
#   1. checks python3 (>= 3.11, or what the wheel's Requires-Python says) and its venv module
#   2. creates the venv /opt/kernelfarm/venv (the path the unit runs)
#   3. installs numpy, llvmlite, pyyaml and the given kernelfarm wheel without its other
#      dependencies (a device needs neither Ray nor XGBoost)
#   4. writes /etc/kernelfarm/token (root-only) and /etc/kernelfarm/device.env
#   5. installs kernelfarm-device@.service (and its restart-backoff drop-in on systemd >= 254)
#   6. enables and (re)starts kernelfarm-device@KEY for each --key
# --dry-run prints the commands instead of running them, and needs no root.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# KF_ROOT and SYSTEMCTL exist for testing this script in a scratch tree
# (KF_ROOT=/tmp/x SYSTEMCTL=echo); leave them unset on a real board.
ROOT=${KF_ROOT:-}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
PREFIX=$ROOT/opt/kernelfarm  # fixed: the unit's ExecStart names /opt/kernelfarm
ETC=$ROOT/etc/kernelfarm
UNIT_DIR=$ROOT/etc/systemd/system
PYTHON=python3
MIN_PY=3.11  # the project's floor (pyproject requires-python, devices/remote.py)
DRY_RUN=0
ENABLE=1
TRACKER=""
TOKEN_FILE=""
SERVE_ARGS=""
WHEEL=""
KEYS=()

usage() {
    cat <<EOF
usage: $(basename "$0") [options] --key KEY WHEEL

  WHEEL                 the kernelfarm wheel to install (python -m build, or devices/wheel.py's)
  --key KEY             device key to serve (repeat for several); the unit is kernelfarm-device@KEY
  --tracker HOST:PORT   tracker address, written to $ETC/device.env (needed on first install)
  --token-file FILE     shared token, copied to $ETC/token (needed on first install)
  --serve-args "ARGS"   extra 'farm serve' flags, e.g. "--kind cuda" or "--capacity 2"
  --python CMD          Python to build the venv with (default: python3)
  --no-enable           install everything but do not enable or start the units
  --dry-run             print what would be done; change nothing
  -h, --help            this text
EOF
}

die() { echo "bootstrap-board: error: $*" >&2; exit 1; }
say() { echo "bootstrap-board: $*"; }

# run CMD...: execute, or under --dry-run print it shell-quoted.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '[dry-run]'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# put_file PATH MODE CONTENT: write CONTENT to PATH unless it is already identical.
put_file() {
    local path=$1 mode=$2 content=$3
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        say "$path unchanged"
        return
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        echo "[dry-run] write $path (mode $mode):"
        # Never echo the token itself.
        case "$path" in
            */token) echo "    <token from ${TOKEN_FILE:-?}>" ;;
            *) printf '%s\n' "$content" | sed 's/^/    /' ;;
        esac
        return
    fi
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    say "wrote $path"
}

# install_copy SRC DEST: copy a file (mode 0644) unless DEST already has the same bytes.
install_copy() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        say "$2 unchanged"
    else
        run install -D -m 0644 "$1" "$2"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --key) [ $# -ge 2 ] || die "--key needs a value"; KEYS+=("$2"); shift 2 ;;
        --tracker) [ $# -ge 2 ] || die "--tracker needs HOST:PORT"; TRACKER=$2; shift 2 ;;
        --token-file) [ $# -ge 2 ] || die "--token-file needs a file"; TOKEN_FILE=$2; shift 2 ;;
        --serve-args) [ $# -ge 2 ] || die "--serve-args needs a value"; SERVE_ARGS=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a command"; PYTHON=$2; shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$WHEEL" ] || die "one wheel only (got $WHEEL and $1)"; WHEEL=$1; shift ;;
    esac
done

[ -n "$WHEEL" ] || { usage >&2; die "no wheel given"; }
[ -f "$WHEEL" ] || die "wheel $WHEEL not found"
case "$WHEEL" in *.whl) ;; *) die "$WHEEL is not a .whl file" ;; esac
[ ${#KEYS[@]} -gt 0 ] || die "give at least one --key (the device key this board serves)"
for key in "${KEYS[@]}"; do
    [[ "$key" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "device key '$key' must be letters, digits, . _ -"
done
if [ -n "$TRACKER" ]; then
    [[ "$TRACKER" =~ ^[^[:space:]:]+:[0-9]+$ ]] || die "--tracker must look like HOST:PORT, got '$TRACKER'"
fi
if [ -n "$TOKEN_FILE" ]; then
    [ -s "$TOKEN_FILE" ] || die "token file $TOKEN_FILE is missing or empty"
fi
if [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing units needs root: run with sudo (or --dry-run to see the steps)"
fi
VENV="$PREFIX/venv"
UNIT_SRC="$SCRIPT_DIR/systemd/kernelfarm-device@.service"
BACKOFF_SRC="$SCRIPT_DIR/systemd/kernelfarm-device@.service.d/backoff.conf"
[ -f "$UNIT_SRC" ] || die "$UNIT_SRC not found (run this script from a kernelfarm checkout's deploy/)"

# --- 1. Python ---------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python >= $MIN_PY (apt-get install python3)"
# The wheel may ask for more than our floor (Requires-Python: >=3.11).
WHEEL_MIN=$("$PYTHON" - "$WHEEL" <<'EOF' 2>/dev/null || true
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
    text = z.read(meta).decode() if meta else ""
m = re.search(r"^Requires-Python:\s*>=\s*([0-9]+\.[0-9]+)", text, re.M)
print(m.group(1) if m else "")
EOF
)
if [ -n "$WHEEL_MIN" ] && [ "$(printf '%s\n%s\n' "$MIN_PY" "$WHEEL_MIN" | sort -V | tail -n1)" = "$WHEEL_MIN" ]; then
    MIN_PY=$WHEEL_MIN
fi
PY_VER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$(printf '%s\n%s\n' "$MIN_PY" "$PY_VER" | sort -V | head -n1)" != "$MIN_PY" ]; then
    die "$PYTHON is $PY_VER; kernelfarm needs >= $MIN_PY"
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PYTHON lacks venv/ensurepip: apt-get install python3-venv"
say "python $PY_VER ($(command -v "$PYTHON")) ok, need >= $MIN_PY"

# --- 2. venv -----------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv $VENV exists"
else
    run "$PYTHON" -m venv "$VENV"
fi

# --- 3. packages -------------------------------------------------------------
# The device side needs only numpy + llvmlite (kernels) and pyyaml (the CLI);
# --no-deps keeps Ray, XGBoost and paramiko off small boards.
run "$VENV/bin/python" -m pip install --quiet --upgrade pip
run "$VENV/bin/python" -m pip install --quiet 'numpy>=1.26' 'llvmlite>=0.45' 'pyyaml>=6.0'
run "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$WHEEL"
# A wheel from devices/fleet/wheel.py has no console script and only the device side: provide
# `farm` ourselves, as the device commands (farm serve, farm tracker) of rpc.cli.
if [ "$DRY_RUN" -eq 1 ] || [ ! -x "$VENV/bin/farm" ]; then
    put_file "$VENV/bin/farm" 0755 "#!$VENV/bin/python
import sys
from rpc.cli import main
sys.exit(main())"
fi
# Fail here, not in the unit's restart loop, if the kernel loader cannot import.
run "$VENV/bin/python" -c 'import rpc.cli, devices.cpu, llvmlite.binding, numpy'
# The units' Documentation= points here.
if [ -f "$SCRIPT_DIR/README.md" ]; then
    install_copy "$SCRIPT_DIR/README.md" "$PREFIX/deploy/README.md"
fi

# --- 4. settings and token ---------------------------------------------------
run install -d -m 0755 "$ETC"
if [ -n "$TOKEN_FILE" ]; then
    # umask: the token never exists readable by others, not even for a moment.
    (umask 077; put_file "$ETC/token" 0600 "$(cat "$TOKEN_FILE")")
elif [ ! -s "$ETC/token" ]; then
    if [ "$DRY_RUN" -eq 1 ]; then
        say "(no $ETC/token yet: a real run needs --token-file)"
    else
        die "no $ETC/token yet: pass --token-file FILE (the tracker's token)"
    fi
fi
if [ -n "$TRACKER" ]; then
    put_file "$ETC/device.env" 0644 "# kernelfarm device servers (kernelfarm-device@KEY.service)
FARM_TRACKER=$TRACKER
FARM_SERVE_ARGS=$SERVE_ARGS"
elif ! grep -qs '^FARM_TRACKER=.' "$ETC/device.env"; then
    if [ "$DRY_RUN" -eq 1 ]; then
        say "(no $ETC/device.env yet: a real run needs --tracker)"
    else
        die "no tracker configured yet: pass --tracker HOST:PORT"
    fi
fi

# --- 5. units ----------------------------------------------------------------
install_copy "$UNIT_SRC" "$UNIT_DIR/kernelfarm-device@.service"
SYSTEMD_VER=$("$SYSTEMCTL" --version 2>/dev/null | awk 'NR==1 {print $2}' || true)
if [[ "$SYSTEMD_VER" =~ ^[0-9]+$ ]] && [ "$SYSTEMD_VER" -ge 254 ]; then
    install_copy "$BACKOFF_SRC" "$UNIT_DIR/kernelfarm-device@.service.d/backoff.conf"
else
    say "systemd ${SYSTEMD_VER:-unknown} < 254: fixed restart delay (no RestartSteps backoff drop-in)"
fi
run "$SYSTEMCTL" daemon-reload

# --- 6. enable and start -----------------------------------------------------
if [ "$ENABLE" -eq 1 ]; then
    for key in "${KEYS[@]}"; do
        run "$SYSTEMCTL" enable "kernelfarm-device@$key.service"
        # restart, not start: a rerun with a new wheel must replace the running server.
        run "$SYSTEMCTL" restart "kernelfarm-device@$key.service"
    done
    say "done; follow a server with: journalctl -fu kernelfarm-device@${KEYS[0]}"
else
    say "installed; start with: systemctl enable --now kernelfarm-device@${KEYS[0]}"
fi
