#!/usr/bin/env bash
# Verify the Raspberry Pi install on the Pi's own CPU (arm64, Cortex-A72 = Pi 4, Cortex-A76 = Pi 5) without a Pi.
#
# On an x86-64 Debian/Ubuntu machine, as root:
#   1. host     installs qemu-user-static, debootstrap and binfmt-support (apt-get) when missing, mounts
#               binfmt_misc and registers qemu-aarch64, so aarch64 programs run under QEMU's user-mode emulator;
#   2. rootfs   builds a Debian bookworm arm64 root file system (debootstrap --foreign --variant=minbase with
#               python3, python3-venv, ca-certificates and systemd, second stage under QEMU) and caches it;
#   3. install  builds the edge-only wheel of this checkout (the core and edge/, as deploy/docker/Dockerfile.edge
#               does: no server code), copies it and deploy/raspberry-pi/ into the root file system and runs
#               install.sh there in a chroot (QEMU_CPU=cortex-a72), so pip makes the resolution a Pi makes
#               (aarch64 wheels of numpy, onnxruntime, grpcio, protobuf and, with a `camera` extra, OpenCV).
#               No systemd runs in a chroot: install.sh enables the unit and skips daemon-reload and start
#               (its own rule; and no credentials are there). Also an x86-64 venv of the same wheel for size;
#   4. run      starts slimsplit-server on the host's loopback (the chroot shares the host's network), runs
#               slimsplit-edge in the chroot under QEMU_CPU=cortex-a72 and cortex-a76 and on the host (this
#               checkout's .venv), one thread, the shipped samples, for each --modes mode, and checks: no torch
#               and no server code in the install, no illegal instruction (SIGILL, exit 132), every prediction
#               of the arm64 edge equal to the x86 edge's;
#   5. report   a JSON file and a table: install time and size, edge RSS, start-up time and encoder time per mode
#               (arm64 figures are EMULATED by QEMU, not Pi figures) beside the x86-64 figures.
# Every step is cached in --cache (a second run redoes only the checks); --check runs steps 1, 3 (cached) and 4-5
# and refuses to build a root file system (tests/test_arm64.py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

readonly SUITE=bookworm
readonly INCLUDE=python3,python3-venv,ca-certificates,systemd
readonly HOST_PACKAGES="qemu-user-static debootstrap binfmt-support"
readonly ALL_STEPS=host,rootfs,install,run
# Inside the root file system
readonly SRC=/opt/slimsplit-src
readonly VENV=/opt/slimsplit/venv
readonly GUEST_HOME=/root  # root's home in the guest (pip's cache lives there)

cache="${SLIMSPLIT_ARM64_CACHE:-${HOME:-/root}/.cache/slimsplit-arm64}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
host_venv="${HOST_VENV:-$repo/.venv}"
server_port=0
steps=$ALL_STEPS
check_only=0
rebuild=0
reinstall=0
modes="w16b8,w8b4,w4b2,w2b1"
cpus="cortex-a72,cortex-a76"
frames=0
json_out="$repo/bench/results/arm64.json"

usage() {
    cat <<USAGE
usage: verify-arm64.sh [--cache DIR] [--server-port N] [--steps LIST] [--check] [--rebuild] [--reinstall]
                       [--modes LIST] [--cpus LIST] [--frames N] [--json-out PATH]

Runs the Raspberry Pi install (install.sh) and the edge in a Debian bookworm arm64 root file system under QEMU
(Cortex-A72 = Pi 4, Cortex-A76 = Pi 5) and compares every prediction with the x86-64 edge's. Needs root.

  --cache DIR       where the root file system, wheels, logs and runs are kept
                    (default: \$SLIMSPLIT_ARM64_CACHE or ~/.cache/slimsplit-arm64; now $cache)
  --server-port N   port of the slimsplit-server started on 127.0.0.1 (default: 0 = a free one)
  --steps LIST      comma-separated, of $ALL_STEPS (default: all; each step skips work its cache holds)
  --check           the check alone: host, install (cached), run; fails (exit 4) without a cached root file system
  --rebuild         build the root file system again (removes the cached one)
  --reinstall       remove the venv in the root file system and run install.sh again (a fresh install time)
  --modes LIST      modes to compare (default: $modes; at least 3)
  --cpus LIST       QEMU_CPU models (default: $cpus)
  --frames N        frames per run (default: 0 = the shipped samples once)
  --json-out PATH   the report (default: bench/results/arm64.json)
  -h, --help        this help

Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), HOST_VENV (the x86-64 venv with slimsplit's
server and edge; default: the checkout's .venv), SLIMSPLIT_ARM64_CACHE.
Exit status: 0 all checks passed; 1 a check failed; 2 usage; 3 a step could not run; 4 --check without a cache.
USAGE
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf 'verify-arm64.sh: error: %s\n' "$*" >&2
    exit "${2:-3}"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --cache | --server-port | --steps | --modes | --cpus | --frames | --json-out)
                [ $# -ge 2 ] || { usage >&2; exit 2; }
                case "$1" in
                    --cache) cache="$2" ;;
                    --server-port) server_port="$2" ;;
                    --steps) steps="$2" ;;
                    --modes) modes="$2" ;;
                    --cpus) cpus="$2" ;;
                    --frames) frames="$2" ;;
                    --json-out) json_out="$2" ;;
                esac
                shift
                ;;
            --check) check_only=1 ;;
            --rebuild) rebuild=1 ;;
            --reinstall) reinstall=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                printf 'verify-arm64.sh: unknown option: %s\n' "$1" >&2
                usage >&2
                exit 2
                ;;
        esac
        shift
    done
    [[ "$server_port" =~ ^[0-9]{1,5}$ ]] && [ "$server_port" -le 65535 ] || die "--server-port: expected 0-65535, got '$server_port'" 2
    [[ "$frames" =~ ^[0-9]+$ ]] || die "--frames: expected a number, got '$frames'" 2
    [[ "$modes" =~ ^[A-Za-z0-9_]+(,[A-Za-z0-9_]+){2,}$ ]] || die "--modes: expected at least 3 modes, comma-separated, got '$modes'" 2
    [[ "$cpus" =~ ^[a-z0-9-]+(,[a-z0-9-]+)*$ ]] || die "--cpus: expected QEMU CPU names, comma-separated, got '$cpus'" 2
    local s
    for s in ${steps//,/ }; do
        case ",$ALL_STEPS," in
            *",$s,"*) ;;
            *) die "--steps: unknown step '$s' (of $ALL_STEPS)" 2 ;;
        esac
    done
    if [ "$check_only" = 1 ]; then
        steps=host,install,run
    fi
    [ -n "$cache" ] || die "--cache: empty" 2
    case "$cache" in
        /) ;;
        /*) ;;
        *) cache="$(pwd)/$cache" ;;
    esac
    while [ "${cache%/}" != "$cache" ]; do cache="${cache%/}"; done
    [ -n "$cache" ] || die "--cache: not the root directory" 2
    # The cache holds a root file system this script deletes and rebuilds: a folder of its own, or a new one.
    if [ -d "$cache" ] && [ ! -e "$cache/.slimsplit-arm64-cache" ] && [ -n "$(ls -A "$cache")" ]; then
        die "--cache: $cache is not empty and not a verify-arm64.sh cache (no .slimsplit-arm64-cache in it)" 2
    fi
    rootfs="$cache/rootfs"
    logs="$cache/logs"
}

want() { case ",$steps," in *",$1,"*) return 0 ;; *) return 1 ;; esac }

# --- mounts of the chroot, undone on exit ------------------------------------------------------------------
mounted=()
server_pid=""

cleanup() {
    local i
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
    done
    mounted=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_once() { # mount_once TARGET MOUNT-ARGS...
    local target="$1"
    shift
    mountpoint -q "$target" && return 0
    mkdir -p "$target"
    mount "$@" "$target"
    mounted+=("$target")
}

chroot_mounts() {
    mount_once "$rootfs/proc" -t proc proc
    mount_once "$rootfs/sys" -t sysfs sysfs
    mount_once "$rootfs/dev" --bind /dev
    mount_once "$rootfs/dev/pts" --bind /dev/pts
    mount_once "$rootfs/dev/shm" -t tmpfs -o mode=1777 tmpfs
    mount_once "$rootfs/tmp" -t tmpfs -o mode=1777 tmpfs
    # the chroot shares the host's network namespace: same resolver, same loopback
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
}

# in_chroot CPU CMD...: run CMD in the root file system under QEMU_CPU=CPU, with a clean environment.
# PIP_CERT: pip's own CA bundle does not hold the local CAs copied from the host (a TLS-inspecting proxy);
# the system bundle does, and holds Debian's CAs too, so on a plain network this changes nothing.
in_chroot() {
    local cpu="$1"
    shift
    QEMU_CPU="$cpu" chroot "$rootfs" /usr/bin/env -i QEMU_CPU="$cpu" HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        "$@"
}

# progress LOG: pass a long step's output through to LOG, printing the lines that say where it is (one in 25 of
# the per-package lines). A shell loop, not awk: mawk buffers its input and the progress would come in bursts.
progress() {
    local log="$1" line verb n_key
    declare -A seen=()
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$log"
        case "$line" in
            "I: Retrieving "* | "I: Validating "* | "I: Extracting "* | "I: Unpacking "* | "I: Configuring "* | "I: Installing "*)
                verb="${line#I: }"
                n_key="${verb%% *}"
                seen[$n_key]=$((${seen[$n_key]:-0} + 1))
                if [ $((seen[$n_key] % 25)) = 1 ]; then
                    printf '    %s (%d so far)\n' "$line" "${seen[$n_key]}"
                fi
                ;;
            "I: "* | "W: "* | "E: "* | "==> "* | "install.sh:"* | "Collecting "* | "Successfully installed"* | "Installing collected"*)
                printf '    %s\n' "$line"
                ;;
            *[Ee]rror*) printf '    %s\n' "$line" ;;
        esac
    done
}

# --- 1. host -------------------------------------------------------------------------------------------------
step_host() {
    say "1/4 host: QEMU user-mode emulation of aarch64 (binfmt_misc)"
    local p missing=""
    for p in $HOST_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        note "installing with apt-get:$missing (qemu-aarch64-static runs arm64 programs; debootstrap builds the"
        note "root file system; binfmt-support registers QEMU with the kernel)"
        apt-get update -q >"$logs/apt.log" 2>&1 || die "apt-get update failed (see $logs/apt.log)"
        # shellcheck disable=SC2086  # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >>"$logs/apt.log" 2>&1 ||
            die "apt-get install$missing failed (see $logs/apt.log)"
    else
        note "installed: $HOST_PACKAGES"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        note "mounting binfmt_misc at /proc/sys/fs/binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (a kernel without it?)"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        note "registering qemu-aarch64 (update-binfmts --enable qemu-aarch64)"
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 ||
            die "could not register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is registered but disabled"
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        die "qemu-aarch64 is registered without the F (fix binary) flag: it would not be found inside a chroot"
    note "qemu-aarch64: enabled, flags $(sed -n 's/^flags: //p' /proc/sys/fs/binfmt_misc/qemu-aarch64); $(qemu-aarch64-static --version | head -n 1)"
    local c models
    models="$(qemu-aarch64-static -cpu help || true)" # it exits 1 after the list
    for c in ${cpus//,/ }; do
        grep -qw -- "$c" <<<"$models" || die "this QEMU has no CPU model '$c' (qemu-aarch64-static -cpu help)"
    done
    [ -x "$host_venv/bin/slimsplit-server" ] && [ -x "$host_venv/bin/slimsplit-edge" ] ||
        die "no slimsplit-server/slimsplit-edge in $host_venv (scripts/setup-venv.sh edge,server, or HOST_VENV=...)"
}

# --- 2. the root file system ---------------------------------------------------------------------------------
step_rootfs() {
    say "2/4 rootfs: Debian $SUITE arm64 in $rootfs"
    if [ "$rebuild" = 1 ] && [ -e "$rootfs" ]; then
        note "--rebuild: removing the cached root file system"
        cleanup
        rm -rf --one-file-system "$rootfs"
    fi
    if [ -e "$rootfs/.slimsplit-rootfs-ok" ]; then
        note "cached ($(cat "$rootfs/.slimsplit-rootfs-ok")); --rebuild builds it again"
        return
    fi
    if [ -e "$rootfs" ]; then
        note "removing an unfinished root file system"
        rm -rf --one-file-system "$rootfs"
    fi
    local t0 t1
    t0=$(date +%s)
    note "debootstrap --arch=arm64 --foreign --variant=minbase --include=$INCLUDE $SUITE (downloads ~70 MB, log: $logs/debootstrap.log)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$mirror" 2>&1 |
        progress "$logs/debootstrap.log" || die "debootstrap (first stage) failed: see $logs/debootstrap.log"
    note "second stage under QEMU (unpacks and configures every package emulated: several minutes)"
    chroot_mounts
    QEMU_CPU=cortex-a72 chroot "$rootfs" /debootstrap/debootstrap --second-stage 2>&1 |
        progress "$logs/debootstrap.log" || die "debootstrap --second-stage failed: see $logs/debootstrap.log"
    # A TLS-inspecting proxy's CAs, where the host has them, so pip inside reaches PyPI as the host does.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        note "copying the host's local CAs (/usr/local/share/ca-certificates) into the root file system"
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        in_chroot cortex-a72 update-ca-certificates >>"$logs/debootstrap.log" 2>&1
    fi
    t1=$(date +%s)
    printf 'debian %s arm64, built %s in %d s, %s\n' "$SUITE" "$(date -u +%FT%TZ)" "$((t1 - t0))" \
        "$(in_chroot cortex-a72 python3 --version)" >"$rootfs/.slimsplit-rootfs-ok"
    note "built in $((t1 - t0)) s: $(du -sh --one-file-system "$rootfs" | cut -f1)"
}

# --- 3. install.sh in the root file system -------------------------------------------------------------------
build_wheel() { # prints the wheel's path
    local stage dist="$cache/dist"
    stage="$(mktemp -d)"
    # the core and the edge role only: the wheel has no slimsplit.server / slimsplit.apps (as Dockerfile.edge)
    tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml setup.py README.md slimsplit edge |
        tar -C "$stage" -xf -
    rm -rf "$dist"
    mkdir -p "$dist"
    "$host_venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dist" "$stage" >&2 ||
        die "building the edge wheel failed"
    rm -rf "$stage"
    ls "$dist"/slimsplit-*.whl
}

source_digest() { # what the install is made of: the packaged sources, the install script and unit, the extras
    (cd "$repo" && find pyproject.toml setup.py README.md slimsplit edge deploy/raspberry-pi -type f \
        ! -path '*__pycache__*' ! -name '*.pyc' ! -name verify-arm64.sh -print0 | sort -z | xargs -0 sha256sum) |
        sha256sum | cut -c1-16
}

extras_line() { # the extras to check beyond install.sh's [edge]: camera, if pyproject.toml has it
    "$host_venv/bin/python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"].get("optional-dependencies", {})
print(",".join(e for e in ("camera",) if e in extras))
PY
}

step_install() {
    say "3/4 install: install.sh inside the arm64 root file system (QEMU_CPU=cortex-a72)"
    [ -e "$rootfs/.slimsplit-rootfs-ok" ] || {
        [ "$check_only" = 1 ] && die "no cached root file system at $rootfs: run verify-arm64.sh without --check first" 4
        die "no root file system at $rootfs (step rootfs)"
    }
    local wheel name stamp_want stamp="$rootfs$SRC/.installed" extras
    wheel="$(build_wheel)"
    name="$(basename "$wheel")"
    note "edge-only wheel: $name ($(du -k "$wheel" | cut -f1) KiB)"
    extras="$(extras_line)"
    stamp_want="$(source_digest) extras=$extras"
    if [ "$reinstall" = 0 ] && [ -x "$rootfs$VENV/bin/slimsplit-edge" ] && [ -e "$stamp" ] &&
        [ "$(head -n 1 "$stamp")" = "$stamp_want" ]; then
        note "cached: this wheel and install.sh are installed (--reinstall runs install.sh again)"
    else
        chroot_mounts
        rm -rf "$rootfs$SRC"
        mkdir -p "$rootfs$SRC/deploy" "$rootfs$SRC/dist"
        cp -r "$here" "$rootfs$SRC/deploy/raspberry-pi"
        cp "$wheel" "$rootfs$SRC/dist/"
        # A fresh venv each time: pip takes a wheel of the version already installed (0.1.0) as satisfied and
        # would keep the old code. pip's cache is kept (no downloads) unless --reinstall or the first install.
        local cold=warm
        rm -rf "$rootfs$VENV"
        if [ "$reinstall" = 1 ] || [ ! -d "$rootfs$GUEST_HOME/.cache/pip" ]; then
            note "a fresh venv, pip's cache emptied: the install time includes every download"
            rm -rf "$rootfs$GUEST_HOME/.cache/pip"
            cold=cold
        else
            note "a fresh venv, pip's cache kept (--reinstall empties it: the install time with every download)"
        fi
        note "install.sh --from $SRC/dist/$name --server 127.0.0.1:50051 --no-start (log: $logs/install.log)"
        local t0 t1 rc=0
        : >"$logs/install.log"
        t0=$(date +%s.%N)
        in_chroot cortex-a72 bash "$SRC/deploy/raspberry-pi/install.sh" --from "$SRC/dist/$name" \
            --server 127.0.0.1:50051 --no-start 2>&1 | progress "$logs/install.log" || rc=$?
        t1=$(date +%s.%N)
        [ "$rc" = 0 ] || die "install.sh failed in the arm64 root file system (exit $rc): see $logs/install.log"
        if [ -n "$extras" ]; then
            note "the $extras extra: pip install ${name}[$extras] in the same venv (install.sh installs [edge])"
            in_chroot cortex-a72 "$VENV/bin/python" -m pip install "$SRC/dist/${name}[$extras]" 2>&1 |
                progress "$logs/install.log" || die "pip install [$extras] failed: see $logs/install.log"
        fi
        printf '%s\ninstall_s=%s pip_cache=%s\n' "$stamp_want" "$(elapsed "$t0" "$t1")" "$cold" >"$stamp"
        note "installed in $(elapsed "$t0" "$t1") s (pip cache $cold)"
    fi
    x86_install "$wheel" "$extras"
}

# The same wheel in a fresh x86-64 venv with the host's Python, for the size and time beside the arm64 ones.
x86_install() {
    local wheel="$1" extras="$2" venv="$cache/x86-venv" stamp t0 t1 spec
    stamp="$(source_digest) extras=$extras"
    if [ "$reinstall" = 0 ] && [ -e "$venv/.installed" ] && [ "$(head -n 1 "$venv/.installed")" = "$stamp" ]; then
        note "x86-64 venv of the same wheel: cached ($venv)"
        return
    fi
    spec="${wheel}[edge${extras:+,$extras}]"
    note "x86-64 venv of the same wheel for comparison: python3 -m venv + pip install $spec"
    rm -rf "$venv"
    t0=$(date +%s.%N)
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >>"$logs/x86-install.log" 2>&1
    PIP_CONSTRAINT="" "$venv/bin/python" -m pip install --quiet "$spec" >>"$logs/x86-install.log" 2>&1 ||
        die "x86-64 install failed: see $logs/x86-install.log"
    t1=$(date +%s.%N)
    printf '%s\ninstall_s=%s\n' "$stamp" "$(elapsed "$t0" "$t1")" >"$venv/.installed"
}

# --- 4. run and compare --------------------------------------------------------------------------------------
start_server() {
    if [ "$server_port" = 0 ]; then
        server_port="$("$host_venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    note "slimsplit-server on 127.0.0.1:$server_port (host, x86-64, $host_venv; log: $logs/server.log)"
    "$host_venv/bin/slimsplit-server" --host 127.0.0.1 --port "$server_port" --log-level warning >"$logs/server.log" 2>&1 &
    server_pid=$!
    local i
    for i in $(seq 1 120); do
        if (: <"/dev/tcp/127.0.0.1/$server_port") 2>/dev/null; then
            return
        fi
        kill -0 "$server_pid" 2>/dev/null || die "slimsplit-server exited: see $logs/server.log"
        sleep 0.5
        [ "$i" != 60 ] || note "... still waiting for the server"
    done
    die "slimsplit-server did not listen on 127.0.0.1:$server_port within 60 s"
}

step_run() {
    say "4/4 run: slimsplit-edge on arm64 (emulated: $cpus) and on x86-64, against a server on 127.0.0.1"
    [ -x "$rootfs$VENV/bin/slimsplit-edge" ] || die "no install in $rootfs$VENV (step install)"
    chroot_mounts
    start_server
    local runs="$cache/runs"
    rm -rf "$runs"
    mkdir -p "$runs" "$(dirname "$json_out")"
    # The driver (host Python): runs each edge with wait4() for its exit status and peak RSS, the checks inside
    # the chroot, the comparison, the JSON and the table. Its exit status is this step's.
    "$host_venv/bin/python" - "$rootfs" "$runs" "$json_out" "$server_port" "$modes" "$cpus" "$frames" \
        "$host_venv" "$cache" "$VENV" "$SRC" <<'PY'
import json, os, platform, re, signal, subprocess, sys, time
from pathlib import Path

rootfs, runs, json_out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
port, modes, cpus, frames = int(sys.argv[4]), sys.argv[5].split(","), sys.argv[6].split(","), int(sys.argv[7])
host_venv, cache, venv, src = Path(sys.argv[8]), Path(sys.argv[9]), sys.argv[10], sys.argv[11]
failures: list[str] = []

def chroot_argv(cpu: str, *argv: str) -> list[str]:
    return ["chroot", str(rootfs), "/usr/bin/env", "-i", f"QEMU_CPU={cpu}", "HOME=/root", "LANG=C.UTF-8",
            "PATH=/usr/bin:/bin", "OMP_NUM_THREADS=1", *argv]

# QEMU 7.2 (bookworm's) does not emulate /proc/cpuinfo for aarch64: a guest reads the host's x86 one, and ONNX
# Runtime's CPU detection (pytorch/cpuinfo) crashes the import on it (SIGSEGV, whatever QEMU_CPU). A Pi's kernel
# shows an ARM one: bind-mount what a Pi 4 (BCM2711, 4 x Cortex-A72, no crypto extension) or a Pi 5 (BCM2712,
# 4 x Cortex-A76) shows over /proc/cpuinfo in the chroot while that CPU's runs go.
PI_CPUINFO = {
    "cortex-a72": ("0xd08", "3", "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4 Model B Rev 1.5"),
    "cortex-a76": ("0xd0b", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                   "lrcpc dcpop asimddp", "Raspberry Pi 5 Model B Rev 1.0"),
}

class pi_cpuinfo:
    def __init__(self, cpu: str) -> None:
        part, rev, features, model = PI_CPUINFO.get(cpu, PI_CPUINFO["cortex-a72"])
        blocks = [f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                  f"CPU architecture: 8\nCPU variant\t: 0x{'4' if cpu == 'cortex-a76' else '0'}\nCPU part\t: {part}\n"
                  f"CPU revision\t: {rev}\n" for i in range(4)]
        self.text = "\n".join(blocks) + f"\nRevision\t: 0000\nModel\t\t: {model}\n"
        self.file = cache / f"cpuinfo-{cpu}"
        self.target = rootfs / "proc" / "cpuinfo"
    def __enter__(self) -> "pi_cpuinfo":
        self.file.write_text(self.text)
        subprocess.run(["mount", "--bind", str(self.file), str(self.target)], check=True)
        return self
    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.target)], check=False)

def measured(argv: list[str], env: dict[str, str]) -> dict[str, float | int | None]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "maxrss_mb": usage.ru_maxrss / 1024, "out": out.decode(errors="replace")}

def sigill(rc: int, out: str) -> bool:
    return rc in (-signal.SIGILL, 128 + signal.SIGILL) or "Illegal instruction" in out

def edge_args(mode: str, json_path: str) -> list[str]:
    args = ["--server", f"127.0.0.1:{port}", "--controller", "fixed", "--mode", mode, "--source", "sample",
            "--threads", "1", "--max-in-flight", "1", "--fps", "0", "--json-out", json_path, "--quiet"]
    return args + (["--frames", str(frames)] if frames else [])

def one(target: str, mode: str) -> dict[str, object]:
    name = f"{target}-{mode}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if target == "x86_64":
        argv = [str(host_venv / "bin" / "slimsplit-edge"), *edge_args(mode, str(runs / name))]
        where = runs / name
    else:
        argv = chroot_argv(target, f"{venv}/bin/slimsplit-edge", *edge_args(mode, f"/tmp/{name}"))
        env = {k: v for k, v in env.items() if not k.startswith("QEMU")} | {"QEMU_CPU": target}
        where = rootfs / "tmp" / name
    print(f"    {target:<11} {mode:<6} ...", end="", flush=True)
    m = measured(argv, env)
    rec: dict[str, object] = {"rc": m["rc"], "wall_s": m["wall_s"], "maxrss_mb": m["maxrss_mb"],
                              "sigill": sigill(int(m["rc"] or 0), str(m["out"]))}
    (runs / f"{target}-{mode}.log").write_text(str(m["out"]))
    if rec["sigill"]:
        failures.append(f"{target} {mode}: illegal instruction (exit {m['rc']})")
    if m["rc"] != 0 or not where.exists():
        failures.append(f"{target} {mode}: exit {m['rc']}: {str(m['out'])[-400:]}")
        print(f" exit {m['rc']}", flush=True)
        return rec
    data = json.loads(where.read_text())
    if where.parent != runs:
        (runs / name).write_text(where.read_text())
    s = data["summary"]
    rec.update(frames=s["frames"], ok=s["ok"], run_s=s["wall_s"], startup_s=float(m["wall_s"]) - s["wall_s"],
               encoder_ms_p50=s["encoder_ms"]["p50"], encoder_ms_mean=s["encoder_ms"]["mean"],
               codec_ms_p50=s["codec_ms"]["p50"], accuracy=s["accuracy"],
               predictions=[(f["index"], f["classes"], f["payload_bytes"], f["scores"]) for f in data["frames"]])
    print(f" exit 0, {s['ok']}/{s['frames']} answered, encoder p50 {s['encoder_ms']['p50']:.2f} ms, "
          f"start-up {rec['startup_s']:.1f} s, RSS {m['maxrss_mb']:.0f} MB", flush=True)
    return rec

# --- the checks inside the install
print("    checks inside the arm64 install:", flush=True)
probe = r'''
import importlib.util, json, sys, platform, os
def spec(n):
    try: return importlib.util.find_spec(n) is not None
    except ModuleNotFoundError: return False
auxv = open("/proc/self/auxv", "rb").read()
import struct
hw = {k: v for k, v in struct.iter_unpack("<QQ", auxv)}
HWCAP = {1 << 0: "fp", 1 << 1: "asimd", 1 << 3: "aes", 1 << 4: "pmull", 1 << 5: "sha1", 1 << 6: "sha2",
         1 << 7: "crc32", 1 << 8: "atomics", 1 << 9: "fphp", 1 << 10: "asimdhp", 1 << 20: "asimddp",
         1 << 23: "asimdfhm", 1 << 21: "sha512", 1 << 22: "sve", 1 << 25: "uscat", 1 << 27: "lrcpc"}
mods = {}
for n in ("numpy", "onnxruntime", "grpc", "google.protobuf", "cv2"):
    if spec(n):
        m = __import__(n, fromlist=["_"]); mods[n] = getattr(m, "__version__", "?")
import numpy as np
a = np.arange(64, dtype=np.float32).reshape(8, 8); (a @ a).sum()
if "cv2" in mods:
    import cv2; cv2.resize(np.zeros((48, 64, 3), np.uint8), (32, 24))
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
    "hwcap": [v for k, v in sorted(HWCAP.items()) if hw.get(16, 0) & k],
    "torch": spec("torch"), "slimsplit.server": spec("slimsplit.server"), "slimsplit.apps": spec("slimsplit.apps"),
    "slimsplit.edge": spec("slimsplit.edge"), "imported": mods}))
'''
inside: dict[str, object] = {}
for cpu in cpus:
    with pi_cpuinfo(cpu):
        m = measured(chroot_argv(cpu, f"{venv}/bin/python", "-c", probe), {**os.environ, "QEMU_CPU": cpu})
    if m["rc"] != 0:
        failures.append(f"{cpu}: the import check failed (exit {m['rc']}): {str(m['out'])[-600:]}")
        if sigill(int(m["rc"] or 0), str(m["out"])):
            failures.append(f"{cpu}: illegal instruction while importing")
        continue
    inside[cpu] = json.loads(str(m["out"]).strip().splitlines()[-1])
    print(f"      {cpu}: {inside[cpu]['machine']}, HWCAP {' '.join(inside[cpu]['hwcap'])}; imported "
          + ", ".join(f"{k} {v}" for k, v in inside[cpu]["imported"].items()), flush=True)
first = next(iter(inside.values()), {})
for mod in ("torch", "slimsplit.server", "slimsplit.apps"):
    if first.get(mod):
        failures.append(f"{mod} is importable in the arm64 install")
pip = subprocess.run(chroot_argv(cpus[0], f"{venv}/bin/python", "-m", "pip", "list", "--format=json"),
                     capture_output=True, text=True, env={**os.environ, "QEMU_CPU": cpus[0]})
packages = {p["name"].lower(): p["version"] for p in json.loads(pip.stdout or "[]")}
if not packages:
    failures.append(f"pip list failed in the arm64 install: {pip.stderr[-400:]}")
for banned in ("torch", "torchvision", "onnx", "prometheus-client", "grpcio-reflection", "grpcio-health-checking"):
    if banned in packages:
        failures.append(f"{banned} is installed on the device (server-side package)")
site = next((rootfs / venv.lstrip("/") / "lib").glob("python3*/site-packages"))
server_files = [str(p.relative_to(site)) for p in (site / "slimsplit").glob("server")] + \
    [str(p.relative_to(site)) for p in (site / "slimsplit").glob("apps")]
if server_files:
    failures.append(f"server code in the install: {server_files}")
tags: dict[str, list[str]] = {}
for dist in site.glob("*.dist-info"):
    wheel = dist / "WHEEL"
    pkg = dist.name.split("-")[0].lower().replace("_", "-")
    if wheel.exists():
        tags[pkg] = [ln.split(":", 1)[1].strip() for ln in wheel.read_text().splitlines() if ln.startswith("Tag:")]
for pkg in ("numpy", "onnxruntime", "grpcio", "protobuf", "opencv-python-headless"):
    if pkg in packages:
        t = tags.get(pkg, [])
        native = any("aarch64" in x for x in t) or all(x.endswith("-any") for x in t)
        print(f"      {pkg} {packages[pkg]}: {', '.join(t[:2])}{' ...' if len(t) > 2 else ''}", flush=True)
        if not native:
            failures.append(f"{pkg}: not an aarch64 (or pure) wheel: {t}")
    elif pkg != "opencv-python-headless":
        failures.append(f"{pkg} is not installed in the arm64 venv")
print(f"      torch: {'INSTALLED' if 'torch' in packages else 'absent'}; slimsplit.server/apps: "
      f"{'PRESENT' if server_files or first.get('slimsplit.server') else 'absent'}", flush=True)

def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", "--one-file-system", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0

def stamp_value(path: Path, key: str) -> str | None:
    if not path.exists():
        return None
    m = re.search(rf"{key}=(\S+)", path.read_text())
    return m.group(1) if m else None

# --- the runs
print("    edge runs (1 encoder thread, 1 frame in flight, the shipped samples):", flush=True)
results: dict[str, dict[str, dict[str, object]]] = {}
results["x86_64"] = {mode: one("x86_64", mode) for mode in modes}
for cpu in cpus:
    with pi_cpuinfo(cpu):
        results[cpu] = {mode: one(cpu, mode) for mode in modes}

compare: dict[str, dict[str, object]] = {}
for cpu in cpus:
    for mode in modes:
        a, b = results[cpu][mode].get("predictions"), results["x86_64"][mode].get("predictions")
        key = f"{cpu}/{mode}"
        if a is None or b is None:
            compare[key] = {"equal": False, "reason": "a run failed"}
            continue
        assert isinstance(a, list) and isinstance(b, list)
        differ = [x[0] for x, y in zip(a, b, strict=False) if (x[0], x[1], x[2]) != (y[0], y[1], y[2])]
        dscore = max((abs(p - q) for x, y in zip(a, b, strict=False) for p, q in zip(x[3], y[3], strict=False)),
                     default=0.0)
        compare[key] = {"frames": len(a), "equal": not differ and len(a) == len(b), "differing_frames": differ[:20],
                        "max_score_diff": dscore}
        if differ or len(a) != len(b):
            failures.append(f"{key}: {len(differ)} of {len(a)} predictions differ from x86-64 (frames {differ[:10]})")

def strip(rec: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in rec.items() if k != "predictions"}

install_stamp = rootfs / src.lstrip("/") / ".installed"
x86_stamp = cache / "x86-venv" / ".installed"
report = {
    "what": "slimsplit edge on arm64 (Debian bookworm, Raspberry Pi install.sh) under QEMU user-mode emulation, "
            "beside the same edge on this x86-64 host; arm64 timings are EMULATED, not Raspberry Pi figures",
    "command": "sudo deploy/raspberry-pi/verify-arm64.sh",
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"machine": platform.machine(), "cpu": next((ln.split(":", 1)[1].strip() for ln in
             open("/proc/cpuinfo") if ln.startswith("model name")), "?"), "cores": os.cpu_count(),
             "qemu": subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()[0]},
    "rootfs": (rootfs / ".slimsplit-rootfs-ok").read_text().strip(),
    "install": {
        "arm64_emulated": {"install_s": float(stamp_value(install_stamp, "install_s") or "nan"),
                           "pip_cache": stamp_value(install_stamp, "pip_cache"),
                           "venv_bytes": du(rootfs / venv.lstrip("/")), "packages": packages},
        "x86_64": {"install_s": float(stamp_value(x86_stamp, "install_s") or "nan"),
                   "venv_bytes": du(cache / "x86-venv"), "note": "the host's Python and pip configuration"},
        "wheel_tags": {k: tags.get(k) for k in ("numpy", "onnxruntime", "grpcio", "protobuf", "opencv-python-headless") if k in tags},
        "torch_installed": "torch" in packages, "server_code": bool(server_files or first.get("slimsplit.server")),
        "camera_extra": "opencv-python-headless" in packages,
    },
    "cpu_features": {cpu: {"qemu_hwcap": v["hwcap"], "proc_cpuinfo_shown": PI_CPUINFO.get(cpu, ("", "", "?"))[2]}  # type: ignore[index]
                     for cpu, v in inside.items()},
    "emulation_notes": [
        "QEMU 7.2 does not emulate the aarch64 cpuinfo file of proc: the guest would read the host's x86 text, on which "
        "onnxruntime's import crashes (SIGSEGV); the cpuinfo of a Pi 4 / Pi 5 is bind-mounted over it in the chroot",
        "QEMU's cortex-a72 model has the ARMv8 crypto extension (aes, pmull, sha1, sha2 in HWCAP); the Pi 4's BCM2711 "
        "has not: code that checks HWCAP at run time (OpenSSL/BoringSSL, numpy, onnxruntime) takes the same paths "
        "only where it does not use them",
        "start-up, encoder and install times under emulation are QEMU's speed on this host, not a Pi's",
        "peak RSS under emulation is the QEMU process's (the guest's memory plus QEMU's translation cache)"],
    "settings": {"modes": modes, "frames": frames or "the shipped samples", "threads": 1, "max_in_flight": 1,
                 "server": f"127.0.0.1:{port} (x86-64 host)"},
    "runs": {t: {m: strip(r) for m, r in v.items()} for t, v in results.items()},
    "predictions_equal": compare,
    "sigill": any(r.get("sigill") for v in results.values() for r in v.values()),
    "failures": failures,
    "passed": not failures,
}
json_out.write_text(json.dumps(report, indent=2) + "\n")

# --- the table
def f(v: object, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"
tg = ["x86_64", *cpus]
hdr = "".join(f"{(t if t == 'x86_64' else t + ' (emul.)'):>22}" for t in tg)
print(f"\n    {'':<30}{hdr}")
ins = report["install"]
row = lambda label, vals: print(f"    {label:<30}" + "".join(f"{v:>22}" for v in vals))
row("install time (s)", [f(ins["x86_64"]["install_s"], ".0f")] + [f(ins["arm64_emulated"]["install_s"], ".0f")] + [""] * (len(cpus) - 1))
row("installed size, venv (MB)", [f(ins["x86_64"]["venv_bytes"] / 1e6, ".0f")] + [f(ins["arm64_emulated"]["venv_bytes"] / 1e6, ".0f")] + [""] * (len(cpus) - 1))
for label, key, fmt in (("start-up (s)", "startup_s", ".2f"), ("peak RSS (MB)", "maxrss_mb", ".0f")):
    row(label + ", max over modes", [f(max((float(r.get(key, 0) or 0) for r in results[t].values()), default=0), fmt) for t in tg])
for mode in modes:
    row(f"encoder p50 (ms) {mode}", [f(results[t][mode].get("encoder_ms_p50"), ".2f") for t in tg])
for mode in modes:
    row(f"predictions = x86 {mode}", ["(ref)"] + [("equal" if compare[f"{c}/{mode}"]["equal"] else "DIFFER") for c in cpus])
print("    (emul.) = arm64 under QEMU user-mode emulation on this host: functional, not a Raspberry Pi's speed")
print(f"\n    report: {json_out}")
if failures:
    print("\n    FAILED:")
    for x in failures:
        print(f"      - {x}")
    sys.exit(1)
print("    all checks passed: no torch, no server code, no illegal instruction, predictions equal to x86-64")
PY
}

main() {
    parse_args "$@"
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, binfmt_misc need it): sudo $0 $*" 3
    mkdir -p "$cache" "$logs"
    touch "$cache/.slimsplit-arm64-cache"
    say "verify-arm64.sh: steps $steps; cache $cache"
    if want host; then step_host; fi
    if want rootfs; then step_rootfs; fi
    if want install; then step_install; fi
    if want run; then step_run; fi
}

# one line, read whole before it runs: an edit of this file during a run cannot change what the run does next
main "$@"; exit
