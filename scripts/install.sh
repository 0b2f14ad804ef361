#!/usr/bin/env bash
# Install the agentwatch daemon as a systemd service (`make install`, after `make setup`):
#
#   /etc/agentwatch/agentwatch.yaml             the config (packaging/agentwatch.yaml), only if
#                                               there is none: yours is never overwritten
#   /etc/agentwatch/policies/rl-sandbox.yaml    the egress policy it names, likewise
#   /etc/systemd/system/agentwatch.service      the unit, @AGENTWATCH@ replaced by the path of
#                                               this checkout's .venv/bin/agentwatch
#   /var/log/agentwatch/                        where the records go
#
# then `systemctl daemon-reload` and `systemctl enable --now agentwatch` when systemd runs.
# The install is editable: the service runs the code of this checkout, which must stay where it
# is (and not under /tmp or /var/tmp, which the unit's PrivateTmp= hides).
#
#   scripts/install.sh               install (root)
#   scripts/install.sh --uninstall   stop, disable and remove the unit; /etc/agentwatch and
#                                    /var/log/agentwatch are kept
#   DESTDIR=/some/dir                a prefix for every installed path; no systemctl, no root
#   AGENTWATCH=/path/to/agentwatch   the entry point the unit runs (default: .venv/bin/agentwatch)
#
# Every line it prints starts with "install: ".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
AGENTWATCH="${AGENTWATCH:-$ROOT/.venv/bin/agentwatch}"
UNIT_NAME=agentwatch.service
CONFIG=/etc/agentwatch/agentwatch.yaml
POLICY=/etc/agentwatch/policies/rl-sandbox.yaml
UNIT=/etc/systemd/system/$UNIT_NAME
LOGS=/var/log/agentwatch

say()  { echo "install: $*"; }
warn() { echo "install: WARNING: $*" >&2; }
die()  { echo "install: ERROR: $*" >&2; exit 1; }
# A command whose own output is prefixed too; its exit status is kept.
run()  { "$@" 2>&1 | sed -u 's/^/install: /'; return "${PIPESTATUS[0]}"; }

usage() { die "usage: [DESTDIR=dir] $0 [--uninstall]"; }

MODE=install
case "${1:-}" in
    "") ;;
    --uninstall) MODE=uninstall ;;
    *) usage ;;
esac
[[ $# -le 1 ]] || usage

if [[ -z $DESTDIR && $(id -u) -ne 0 ]]; then
    die "must run as root (try: sudo make $MODE)"
fi

# systemctl only for a real install on a machine where systemd is PID 1.
use_systemd() { [[ -z $DESTDIR && -d /run/systemd/system ]]; }

if [[ $MODE == uninstall ]]; then
    if use_systemd; then
        if systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null || systemctl is-active --quiet "$UNIT_NAME"; then
            run systemctl disable --now "$UNIT_NAME" || warn "systemctl disable --now $UNIT_NAME failed"
        fi
    fi
    if [[ -e $DESTDIR$UNIT ]]; then
        rm -f "$DESTDIR$UNIT"
        say "removed $DESTDIR$UNIT"
    else
        say "no $DESTDIR$UNIT to remove"
    fi
    if use_systemd; then
        run systemctl daemon-reload
        run systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    say "kept $DESTDIR/etc/agentwatch (config and policies) and $DESTDIR$LOGS (records): remove them by hand if you want them gone"
    exit 0
fi

# ---- install ----------------------------------------------------------------

[[ -x $AGENTWATCH ]] || die "$AGENTWATCH is not an executable: run \`make setup\` first"
# The path goes into ExecStart= unquoted: systemd would read a blank, '%', '\', '"' or '$' there
# as syntax, so a checkout at such a path is refused rather than installed broken.
if [[ ! $AGENTWATCH =~ ^/[A-Za-z0-9._/+-]+$ ]]; then
    die "the unit cannot run $AGENTWATCH (only letters, digits and ._/+- are safe in ExecStart=): move the checkout"
fi
case "$AGENTWATCH" in
    /tmp/*|/var/tmp/*) warn "$AGENTWATCH is under /tmp or /var/tmp, which the unit's PrivateTmp=yes hides: the service will not start from there; move the checkout" ;;
esac
for f in packaging/agentwatch.yaml packaging/agentwatch.service policies/rl-sandbox.yaml; do
    [[ -f $ROOT/$f ]] || die "$ROOT/$f is missing"
done

# A user's file is never replaced: only a missing one is installed.
install_once() {  # src dest what
    local src=$1 dest=$DESTDIR$2 what=$3
    if [[ -e $dest ]]; then
        if cmp -s "$src" "$dest"; then
            say "$what: $dest is up to date"
        else
            say "$what: kept your $dest (an existing file is never overwritten; the shipped one is $src)"
        fi
    else
        install -D -m 0644 "$src" "$dest"
        say "$what: installed $dest"
    fi
}

install -d -m 0755 "$DESTDIR/etc/agentwatch" "$DESTDIR/etc/agentwatch/policies"
install_once "$ROOT/packaging/agentwatch.yaml" "$CONFIG" config
install_once "$ROOT/policies/rl-sandbox.yaml" "$POLICY" policy

# The unit is agentwatch's own: always replaced, with the entry point's path substituted
# (awk reads it from the environment: no escape processing, no sed metacharacters).
install -d -m 0755 "$DESTDIR$(dirname "$UNIT")"
tmp="$(mktemp "$DESTDIR$(dirname "$UNIT")/.agentwatch.service.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
AW_PATH="$AGENTWATCH" awk '{
    out = ""
    while ((i = index($0, "@AGENTWATCH@")) > 0) {
        out = out substr($0, 1, i - 1) ENVIRON["AW_PATH"]
        $0 = substr($0, i + length("@AGENTWATCH@"))
    }
    print out $0
}' "$ROOT/packaging/agentwatch.service" > "$tmp"
chmod 0644 "$tmp"
if [[ -e $DESTDIR$UNIT ]] && cmp -s "$tmp" "$DESTDIR$UNIT"; then
    rm -f "$tmp"
    say "unit: $DESTDIR$UNIT is up to date (runs $AGENTWATCH)"
else
    mv -f "$tmp" "$DESTDIR$UNIT"
    say "unit: installed $DESTDIR$UNIT (runs $AGENTWATCH)"
fi
trap - EXIT

install -d -m 0750 "$DESTDIR$LOGS"
say "logs: $DESTDIR$LOGS"

HAND="$AGENTWATCH daemon --config $CONFIG"
if [[ -n $DESTDIR ]]; then
    say "DESTDIR=$DESTDIR: systemctl not run; on the target: systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
    exit 0
fi

if ! run "$AGENTWATCH" daemon --config "$CONFIG" --check; then
    die "$CONFIG does not pass the check above: fix it, then run \`make install\` again"
fi

if ! use_systemd; then
    say "systemd is not running here (no /run/systemd/system): the unit is installed but not started"
    say "start the daemon by hand (as root):  $HAND"
    say "stop it with Ctrl-C or SIGTERM; SIGHUP reloads the config"
    exit 0
fi

was_active=0
systemctl is-active --quiet "$UNIT_NAME" && was_active=1
run systemctl daemon-reload
if ! run systemctl enable --now "$UNIT_NAME"; then
    die "$UNIT_NAME did not start: see \`journalctl -u $UNIT_NAME -n 50\` and \`agentwatch doctor\`"
fi
if [[ $was_active -eq 1 ]]; then
    run systemctl restart "$UNIT_NAME" || die "$UNIT_NAME did not restart: see \`journalctl -u $UNIT_NAME -n 50\`"
    say "restarted $UNIT_NAME (it was running): it now runs this checkout's code and unit"
fi
say "$UNIT_NAME is enabled and running: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME"
say "config: $CONFIG (check: $AGENTWATCH daemon --config $CONFIG --check; apply: systemctl reload $UNIT_NAME)"
