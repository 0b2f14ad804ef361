#!/usr/bin/env bash
# GPU check on a real NVIDIA host, which may reach no package registry:
# installs BCC and agentwatch's Python needs from an offline bundle built by
# scripts/gpu-bundle.sh, runs a few seconds of torch matmuls under
# `agentwatch run`, and prints the milestones, counters, NVML figures and
# alerts it saw.
#
#   scripts/gpu-check.sh BUNDLE_DIR [SECONDS]      (as root)
set -euo pipefail
bundle=$(realpath "${1:?usage: gpu-check.sh BUNDLE_DIR [SECONDS]}")
seconds=${2:-6}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "gpu-check: run as root" >&2; exit 2; }
py=${PYTHON:-python3}
prefix=/opt/agentwatch-offline

if ! "$py" -c 'import bcc' 2>/dev/null; then
  echo "gpu-check: installing BCC from $bundle/debs into $prefix (kernel headers into /usr/src)"
  mkdir -p "$prefix"
  for deb in "$bundle"/debs/*.deb; do
    case $deb in
      *linux-headers-*) dpkg -x "$deb" / ;;
      *) dpkg -x "$deb" "$prefix" ;;
    esac
  done
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$prefix/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c 'import orjson, pyroute2, click, tabulate, yaml' 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$prefix/site" "$bundle"/wheels/*.whl
  export PYTHONPATH="$prefix/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$repo:${PYTHONPATH:-}"

kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include/linux/kconfig.h" ] && [ ! -e "$kdir/source/include/linux/kconfig.h" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  echo "gpu-check: NOTICE: kernel $(uname -r) has no headers; linking $hdr for BCC (agentwatch reads struct fields only through BTF)"
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "${hdr%-amd64}-common" "$kdir/source"
fi
grep -q ' /sys/kernel/tracing tracefs' /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing

aw=("$py" -m tracer.cli)
echo "== doctor"
"${aw[@]}" doctor || true
log=$(mktemp /tmp/agentwatch-gpu.XXXXXX.jsonl)
echo "== agentwatch run -- $py demo/gpu_workload.py $seconds"
rc=0
"${aw[@]}" run --events --format json --output "$log" --label check=gpu -- "$py" "$repo/demo/gpu_workload.py" "$seconds" || rc=$?
echo "== log: $log ($(wc -l <"$log") records); the workload exited with $rc"
"$py" "$repo/scripts/gpu_summary.py" "$log"
[ -n "${GPU_CHECK_OUT:-}" ] && cp "$log" "$GPU_CHECK_OUT/" || true
