#!/usr/bin/env bash
# Install, update or remove the slimsplit edge service on a Raspberry Pi.
#
# Target: Raspberry Pi OS bookworm 64-bit (Debian 12, arm64) with its Python 3.11. Idempotent: running it
# again updates the package and the unit and keeps your /etc/slimsplit/edge.toml.
#
#   sudo deploy/raspberry-pi/install.sh --server my-server.lan:50051    # install (or update) from this checkout
#   sudo deploy/raspberry-pi/install.sh --from slimsplit-0.1.0-py3-none-any.whl
#   deploy/raspberry-pi/install.sh --dry-run                            # print every step, change nothing
#   sudo deploy/raspberry-pi/install.sh --uninstall [--purge]
#
# What an install does: creates the system user `slimsplit`; creates a virtual environment in
# /opt/slimsplit/venv and pip-installs slimsplit with the `edge` extra only (numpy, onnxruntime, grpcio,
# protobuf; never torch); copies edge.toml to /etc/slimsplit/ unless one is there and checks it with
# slimsplit-edge --print-config; creates /etc/slimsplit/credentials/ (root's, 0700) for the CA, the device's
# certificate, key and token the unit loads with LoadCredential= (README.md says how to make them) and names the
# ones missing; installs slimsplit-edge.service into /etc/systemd/system, enables it and (re)starts it (not while
# a credential is missing: the unit would not start).
#
# Environment (packaging and tests; the defaults are what slimsplit-edge.service expects):
#   SLIMSPLIT_PREFIX=/opt/slimsplit  SLIMSPLIT_CONFIG_DIR=/etc/slimsplit  SLIMSPLIT_UNIT_DIR=/etc/systemd/system
#   SLIMSPLIT_USER=slimsplit  PYTHON=python3
# A non-default prefix, config folder or user is written into the installed copy of the unit.
set -euo pipefail

readonly UNIT_NAME=slimsplit-edge.service
readonly DEFAULT_PREFIX=/opt/slimsplit
readonly DEFAULT_CONFIG_DIR=/etc/slimsplit
readonly DEFAULT_USER=slimsplit
# StateDirectory= in the unit: systemd creates and owns it; the service user's home.
readonly STATE_DIR=/var/lib/slimsplit-edge
# LoadCredential= sources of the unit, in $config_dir/credentials/.
readonly CREDENTIALS="ca.crt device.crt device.key device.token"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

prefix="${SLIMSPLIT_PREFIX:-$DEFAULT_PREFIX}"
config_dir="${SLIMSPLIT_CONFIG_DIR:-$DEFAULT_CONFIG_DIR}"
unit_dir="${SLIMSPLIT_UNIT_DIR:-/etc/systemd/system}"
user="${SLIMSPLIT_USER:-$DEFAULT_USER}"
python="${PYTHON:-python3}"

action=install
dry_run=0
start=1
purge=0
server=""
from="$repo"
credentials_missing=0

usage() {
    cat <<USAGE
usage: install.sh [--dry-run] [--server HOST:PORT] [--from PATH] [--no-start]
       install.sh --uninstall [--purge] [--dry-run]

  --server HOST:PORT  the slimsplit server; written into $config_dir/edge.toml ([server] address)
  --from PATH         what to pip-install: a checkout of slimsplit or a wheel (default: $repo)
  --no-start          install and enable the service, but do not (re)start it now
  --dry-run           print each step that would change the system, change nothing (no root needed)
  --uninstall         stop and remove the service and the virtual environment
  --purge             with --uninstall: also remove $config_dir, $STATE_DIR and the user '$user'
  -h, --help          this help
USAGE
}

log() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# run CMD ARGS...: run a command that changes the system, or with --dry-run only print it.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry_run=1 ;;
            --uninstall) action=uninstall ;;
            --purge) purge=1 ;;
            --no-start) start=0 ;;
            --server)
                [ $# -ge 2 ] || { usage >&2; exit 2; }
                server="$2"
                shift
                ;;
            --from)
                [ $# -ge 2 ] || { usage >&2; exit 2; }
                from="$2"
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                printf 'install.sh: unknown option: %s\n' "$1" >&2
                usage >&2
                exit 2
                ;;
        esac
        shift
    done
    if [ "$purge" = 1 ] && [ "$action" != uninstall ]; then
        die "--purge goes with --uninstall"
    fi
    if [ -n "$server" ] && ! [[ "$server" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$ ]]; then
        die "--server: expected HOST:PORT (IPv6 as [addr]:PORT), got '$server'"
    fi
}

# The paths this script deletes or writes must be absolute and never the root itself.
check_paths() {
    local p
    for p in "$prefix" "$config_dir" "$unit_dir"; do
        case "$p" in
            /?*) ;;
            *) die "paths must be absolute and not '/': got '$p'" ;;
        esac
    done
    [[ "$user" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SLIMSPLIT_USER: not a valid user name: '$user'"
}

check_root() {
    if [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo $0 ...), or try --dry-run"
    fi
}

# Read-only checks of the platform; on a dry run every problem is only a warning.
check_platform() {
    local arch codename=""
    arch="$(uname -m)"
    [ "$arch" = aarch64 ] || warn "this is $arch, not aarch64: the unit's limits are sized for a 64-bit Raspberry Pi"
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091  # the running system's file, not part of this repository
        codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    fi
    [ "$codename" = bookworm ] || warn "written for Raspberry Pi OS / Debian bookworm, this is '${codename:-unknown}'"
    if ! command -v "$python" >/dev/null 2>&1; then
        [ "$dry_run" = 1 ] || die "$python not found (apt-get install python3)"
        warn "$python not found"
        return
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        [ "$dry_run" = 1 ] || die "$python is older than 3.11"
        warn "$python is older than 3.11"
    fi
}

have_systemd() { [ -d /run/systemd/system ]; }

ensure_venv_support() {
    if command -v "$python" >/dev/null 2>&1 && "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        return
    fi
    log "installing python3-venv"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
}

ensure_user() {
    if id -u "$user" >/dev/null 2>&1; then
        log "user $user exists"
        return
    fi
    log "creating system user $user"
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "slimsplit edge service" "$user"
}

install_package() {
    local venv="$prefix/venv"
    if [ -x "$venv/bin/python" ]; then
        log "updating the virtual environment $venv"
    else
        log "creating the virtual environment $venv"
        run install -d -m 0755 "$prefix"
        run "$python" -m venv "$venv"
    fi
    run "$venv/bin/python" -m pip install --quiet --upgrade pip
    local source="$from" stage=""
    if [ -d "$from" ]; then
        # a checkout: only the core and the edge role go to the device (no server or apps code: their folders are
        # left out of the copy pip builds from, as deploy/docker/Dockerfile.edge does)
        if [ "$dry_run" = 1 ]; then
            stage="${TMPDIR:-/tmp}/slimsplit-edge-stage"
        else
            stage="$(mktemp -d)"
        fi
        log "staging the core and edge/ of $from for the build (no server, no apps)"
        run tar -C "$from" --exclude=__pycache__ --exclude='*.pyc' -cf "$stage/src.tar" pyproject.toml setup.py \
            README.md slimsplit edge
        run mkdir -p "$stage/src"
        run tar -C "$stage/src" -xf "$stage/src.tar"
        source="$stage/src"
    fi
    log "installing slimsplit[edge] from $from"
    # --force-reinstall --no-deps first: pip keeps an installed slimsplit of the same version (0.1.0) otherwise,
    # and a wheel or checkout with new code would not replace the old one
    run "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$source"
    run "$venv/bin/python" -m pip install --upgrade "${source}[edge]"
    if [ -n "$stage" ]; then
        run rm -rf "$stage"
    fi
    if [ "$dry_run" = 1 ]; then
        printf '+ check: torch is not installed in %s; %s --help runs\n' "$venv" "$venv/bin/slimsplit-edge"
    else
        if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
            warn "torch is installed in $venv: the edge needs only the 'edge' extra (pip uninstall torch)"
        fi
        "$venv/bin/slimsplit-edge" --help >/dev/null || die "$venv/bin/slimsplit-edge does not run"
    fi
    run install -m 0644 "$here/README.md" "$prefix/README.md"
}

install_config() {
    local config="$config_dir/edge.toml"
    run install -d -m 0755 "$config_dir"
    if [ -e "$config" ]; then
        log "keeping the existing $config"
    else
        log "installing $config"
        # owned by root; the service user reads it through its group (slimsplit-edge --config), others cannot
        run install -o root -g "$user" -m 0640 "$here/edge.toml" "$config"
    fi
    if [ -e "$config_dir/edge.env" ]; then
        warn "$config_dir/edge.env is no longer read: move its settings into $config"
    fi
    if [ -n "$server" ]; then
        log "server: $server"
        run sed -i "s|^address = .*|address = \"$server\"|" "$config"
    fi
    if [ "$dry_run" = 1 ]; then
        printf '+ check: %s --config %s --print-config\n' "$prefix/venv/bin/slimsplit-edge" "$config"
    else
        "$prefix/venv/bin/slimsplit-edge" --config "$config" --print-config >/dev/null ||
            die "$config is not a valid slimsplit-edge configuration (the message above names the key)"
    fi
}

install_credentials() {
    local dir="$config_dir/credentials" name missing=""
    run install -d -o root -g root -m 0700 "$dir"
    for name in $CREDENTIALS; do
        [ -e "$dir/$name" ] || missing="$missing $name"
    done
    if [ -n "$missing" ]; then
        credentials_missing=1
        warn "missing in $dir:$missing (the unit loads them with LoadCredential= and does not start without them)"
        printf '    make them on the operator machine (README.md: TLS, device certificate and token):\n'
        printf '      slimsplit-certs device --ca CA_DIR --out OUT --devices devices.toml DEVICE_ID\n'
        printf '    copy CA_DIR/ca.crt and OUT/DEVICE_ID.{crt,key,token} here, then install each, mode 0600:\n'
        printf '      sudo install -m 0600 DEVICE_ID.token %s/device.token   (and ca.crt, device.crt, device.key)\n' "$dir"
    else
        log "credentials in $dir: $CREDENTIALS"
    fi
}

install_unit() {
    local src="$here/$UNIT_NAME" dest="$unit_dir/$UNIT_NAME" tmp
    log "installing $dest"
    if [ "$dry_run" = 1 ]; then
        printf '+ render %q > %q (prefix %s, config %s, user %s)\n' "$src" "$dest" "$prefix" "$config_dir" "$user"
    else
        install -d -m 0755 "$unit_dir"
        tmp="$(mktemp)"
        sed -e "s|$DEFAULT_PREFIX/|$prefix/|g" \
            -e "s|$DEFAULT_CONFIG_DIR/|$config_dir/|g" \
            -e "s|^User=$DEFAULT_USER\$|User=$user|" \
            -e "s|^Group=$DEFAULT_USER\$|Group=$user|" \
            "$src" >"$tmp"
        install -m 0644 "$tmp" "$dest"
        rm -f "$tmp"
    fi
    if have_systemd; then
        run systemctl daemon-reload
    else
        warn "systemd is not running here: skipping daemon-reload and start"
    fi
    run systemctl enable "$UNIT_NAME"
    if [ "$start" = 1 ] && [ "$credentials_missing" = 1 ]; then
        warn "not (re)starting $UNIT_NAME until its credentials are in place: then systemctl restart $UNIT_NAME"
    elif [ "$start" = 1 ] && have_systemd; then
        log "(re)starting $UNIT_NAME"
        # --no-block: the unit is Type=notify and is ready only once the server answers; the install does not
        # wait for that (systemctl status and the journal show it)
        run systemctl restart --no-block "$UNIT_NAME"
    fi
}

do_install() {
    check_platform
    ensure_venv_support
    ensure_user
    install_package
    install_config
    install_credentials
    install_unit
    log "done. Check it with:"
    printf '    systemctl status %s\n    journalctl -u %s -f\n' "$UNIT_NAME" "$UNIT_NAME"
}

do_uninstall() {
    local dest="$unit_dir/$UNIT_NAME"
    if [ -e "$dest" ]; then
        log "removing $dest"
        # disable works without a running systemd (it removes the wants/ links); --now also stops it
        if have_systemd; then
            run systemctl disable --now "$UNIT_NAME" || true
        else
            run systemctl disable "$UNIT_NAME" || true
        fi
        run rm -f "$dest"
        if have_systemd; then
            run systemctl daemon-reload
            run systemctl reset-failed "$UNIT_NAME" || true
        fi
    else
        log "no unit at $dest"
    fi
    if [ -e "$prefix/venv" ] || [ -e "$prefix/README.md" ]; then
        log "removing $prefix/venv"
        run rm -rf "$prefix/venv" "$prefix/README.md"
        run rmdir --ignore-fail-on-non-empty "$prefix"
    fi
    if [ "$purge" = 1 ]; then
        log "purging configuration, state and user"
        run rm -rf "$config_dir" "$STATE_DIR"
        if id -u "$user" >/dev/null 2>&1; then
            run userdel "$user"
        fi
    else
        log "kept $config_dir and the user $user (--purge removes them)"
    fi
    log "done"
}

main() {
    parse_args "$@"
    check_paths
    check_root
    [ "$dry_run" = 0 ] || log "dry run: nothing is changed"
    case "$action" in
        install) do_install ;;
        uninstall) do_uninstall ;;
    esac
}

main "$@"
