#!/usr/bin/env bash
# Download the wheels of scripts/gpu_wheels.txt for the GPU machine (x86-64 Linux, CPython 3.12) into .whl/, with
# the device tool's pip command (no dependencies: the list names each one), then check that they and the working
# tree fit the 64 MiB that a device call carries. Run once from the repository root, on a machine with network:
#   echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"     # .whl/ travels only as a carried path
#   scripts/fetch_gpu_wheels.sh
# Then a device call names .whl in carry and runs scripts/gpu_check.sh (docs/benchmarks.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
mapfile -t wheels < <(grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$')
mkdir -p .whl
rm -f .whl/*.whl                     # one version of each: two of one package stop the whole install
"$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
found=$(ls .whl/*.whl | wc -l)
if [[ $found != "${#wheels[@]}" ]]; then
  echo "fetch_gpu_wheels: ${#wheels[@]} wheels listed, $found in .whl/" >&2
  exit 1
fi
whl_bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
ls -l .whl/*.whl
awk -v w="$whl_bytes" -v t="$tree_bytes" 'BEGIN { printf "wheels %.2f MiB + working tree %.2f MiB = %.2f MiB of the 64 MiB a device call carries\n", w / 1048576, t / 1048576, (w + t) / 1048576 }'
if (( whl_bytes + tree_bytes > limit )); then
  echo "fetch_gpu_wheels: over the 64 MiB limit" >&2
  exit 1
fi
