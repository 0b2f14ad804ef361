#!/usr/bin/env bash
# Build the offline bundle that scripts/gpu-check.sh installs from, on a
# machine that reaches Debian's archive and PyPI. GPU hosts are often
# sealed off from package registries; they get this folder instead.
#
#   scripts/gpu-bundle.sh DIR [PYTHON_VERSION]   (default 3.12, the python that holds torch there)
#
# DIR/debs: BCC 0.26 and the libraries it links (Debian 12 builds, which
# run on Ubuntu 22.04+ too) and Debian's 6.1 kernel headers, which BCC
# compiles against when the GPU host's kernel has none of its own.
# DIR/wheels: the Python packages agentwatch needs that a CUDA image lacks.
set -euo pipefail
out=${1:?usage: gpu-bundle.sh DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
mkdir -p "$out/debs" "$out/wheels"
debs=(libbpfcc python3-bpfcc libclang-cpp14 libllvm14 libbpf1 libelf1 libz3-4 libedit2 libffi8
      libtinfo6 libbsd0 libmd0)
headers=$(dpkg-query -W -f='${Package}\n' 'linux-headers-*-amd64' 2>/dev/null | grep -E '^linux-headers-[0-9]' | sort -V | tail -1)
[ -n "$headers" ] || { echo "gpu-bundle: install linux-headers-amd64 first" >&2; exit 2; }
common=${headers%-amd64}-common
(cd "$out/debs" && apt-get download "${debs[@]}" "$headers" "$common" 2>&1 | grep -v '^W:' || true)
py=${PYTHON:-python3}
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/wheels" orjson pyroute2==0.7.12 tabulate click pyyaml
echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $out ($(ls "$out/debs" | wc -l) debs, $(ls "$out/wheels" | wc -l) wheels)"
