#!/usr/bin/env bash
# Install what agentwatch needs and build its virtualenv (.venv in the repo root).
# Debian 12, Ubuntu 22.04 / 24.04; run as root. Idempotent: a second run only
# checks and does nothing (no apt, no pip) unless something is missing.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: must run as root (try: sudo $0)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log()    { echo "setup: $*"; }
notice() { echo "setup: NOTICE: $*"; }
warn()   { echo "setup: WARNING: $*" >&2; }
die()    { echo "setup: ERROR: $*" >&2; exit 1; }

DONE=()   # one line per thing actually changed, printed at the end

# --- distro ---------------------------------------------------------------
OS_ID=debian OS_VERSION=
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    OS_ID=${ID:-debian} OS_VERSION=${VERSION_ID:-}
fi
ARCH=$(dpkg --print-architecture)
KREL=$(uname -r)

# Python for the venv: the distro's own (python3-bpfcc is built for it).
# Ubuntu 22.04 ships 3.10; agentwatch needs >=3.11, so use its python3.11
# (Debian's site.py still puts /usr/lib/python3/dist-packages, i.e. bcc, on the path).
PY=/usr/bin/python3
EXTRA_PKGS=()
if [[ $OS_ID == ubuntu && $OS_VERSION == 22.04 ]]; then
    PY=/usr/bin/python3.11
    EXTRA_PKGS=(python3.11 python3.11-venv)
fi

# --- apt helpers ------------------------------------------------------------
is_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}
# true when apt has an installable candidate (not a purely virtual/absent name)
has_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n $c && $c != "(none)" ]]
}
apt_install() {
    apt_update_once
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    DONE+=("apt installed: $*")
}

# --- 1. packages ------------------------------------------------------------
# The second line is what the scenario tests and the demo run as real tools (a real sshd,
# autossh, ncat -e, socat relays, git, curl); the third, the fleet tests' Docker (dockerd and
# a busybox root filesystem to import as a local image: no registry is reachable).
REQUIRED=(python3-bpfcc python3-venv python3-pip iproute2 socat openssh-server
          openssh-client netcat-openbsd gcc libc6-dev make kmod procps "${EXTRA_PKGS[@]}"
          autossh ncat git curl rsyslog telnet
          docker.io busybox-static)
missing=()
for p in "${REQUIRED[@]}"; do is_installed "$p" || missing+=("$p"); done

need_bpftool=0
if ! is_installed bpftool && ! bpftool version >/dev/null 2>&1; then need_bpftool=1; fi
need_vagrant=0
if ! is_installed vagrant && ! command -v vagrant >/dev/null 2>&1; then need_vagrant=1; fi

if (( ${#missing[@]} + need_bpftool + need_vagrant > 0 )); then
    apt_update_once
    if (( need_bpftool )); then
        if has_candidate bpftool; then
            missing+=(bpftool)
        elif has_candidate "linux-tools-$KREL"; then      # Ubuntu
            missing+=(linux-tools-common "linux-tools-$KREL")
        else
            notice "no bpftool package for kernel $KREL in apt; skipping bpftool (debugging aid only)"
        fi
    fi
    if (( need_vagrant )); then
        if has_candidate vagrant; then
            missing+=(vagrant)
        else
            notice "vagrant is not in this distro's archive (e.g. Ubuntu 24.04); skipping it"
        fi
    fi
    if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
fi

# --- 2. kernel headers --------------------------------------------------------
# BCC compiles its C against /lib/modules/$(uname -r)/build. Debian splits the
# headers: kconfig.h lives in the -common dir, reached through .../source.
MOD=/lib/modules/$KREL
have_headers() {
    [[ -e $MOD/build/include/linux/kconfig.h || -e $MOD/source/include/linux/kconfig.h ]]
}
link_to() {   # link_to NAME TARGET
    if [[ -d $MOD/$1 && ! -L $MOD/$1 ]]; then
        warn "$MOD/$1 is a real directory without usable headers; leaving it alone"
        return 1
    fi
    ln -sfn "$2" "$MOD/$1"
}

if ! have_headers; then
    if has_candidate "linux-headers-$KREL" || { apt_update_once; has_candidate "linux-headers-$KREL"; }; then
        is_installed "linux-headers-$KREL" || apt_install "linux-headers-$KREL"
    fi
fi
if ! have_headers; then
    case $OS_ID in
        ubuntu) generic=linux-headers-generic ;;
        *)      generic=linux-headers-$ARCH ;;
    esac
    if ! is_installed "$generic"; then
        apt_update_once
        if has_candidate "$generic"; then apt_install "$generic"; else warn "no $generic package in apt"; fi
    fi
    hdr=$(ls -d /usr/src/linux-headers-*-{amd64,arm64,generic} 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -z $hdr ]]; then
        warn "no kernel headers found under /usr/src; BCC will not be able to compile programs"
    else
        src=$hdr
        [[ -d ${hdr%-*}-common ]] && src=${hdr%-*}-common
        mkdir -p "$MOD"
        if link_to build "$hdr" && link_to source "$src"; then
            notice "the running kernel $KREL has no headers package of its own."
            notice "linked $MOD/build -> $hdr and $MOD/source -> $src."
            notice "agentwatch only uses tracepoint args, BPF helpers and BTF (CO-RE) offsets, so the version mismatch is safe."
            DONE+=("linked kernel headers $(basename "$hdr") for $KREL")
        fi
    fi
elif [[ -L $MOD/build && $(readlink "$MOD/build") != *"$KREL"* ]]; then
    log "kernel headers: $MOD/build -> $(readlink "$MOD/build") (not $KREL's own; fine for agentwatch)"
fi

# --- 3. tracefs / debugfs -----------------------------------------------------
mount_fs() {   # mount_fs TYPE DIR
    mountpoint -q "$2" 2>/dev/null && return 0
    if mount -t "$1" "$1" "$2" 2>/dev/null; then
        notice "mounted $1 at $2"
        DONE+=("mounted $1 at $2")
    else
        warn "could not mount $1 at $2; tracing may not work"
    fi
}
mount_fs tracefs /sys/kernel/tracing
mount_fs debugfs /sys/kernel/debug

# --- 4. virtualenv --------------------------------------------------------------
[[ -x $PY ]] || die "$PY not found"
venv_ok() {
    [[ -x $VENV/bin/python ]] && grep -qs '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"
}
if venv_ok && [[ -f $STAMP && $STAMP -nt $ROOT/pyproject.toml ]]; then
    :   # up to date
else
    if ! venv_ok; then
        log "creating $VENV ($PY, --system-site-packages)"
        "$PY" -m venv --clear --system-site-packages "$VENV"
        DONE+=("created .venv")
    fi
    log "pip install -e '.[test]'"
    (cd "$ROOT" && "$VENV/bin/pip" install -q -e '.[test]')
    DONE+=("pip installed agentwatch (editable) with test extras")
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null \
    || die "'import bcc' fails in $VENV: python3-bpfcc must be installed for $PY (dpkg -L python3-bpfcc)"
touch "$STAMP"

# --- summary ----------------------------------------------------------------------
if (( ${#DONE[@]} )); then
    for d in "${DONE[@]}"; do log "done: $d"; done
else
    log "nothing to do; everything already set up"
fi
log "ready: $VENV/bin/python (bcc importable), run 'make test'"
