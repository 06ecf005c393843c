#!/usr/bin/env bash
# `make gpu-check` on a GPU node that has PyTorch but no network (docs/benchmarks.md, "On a GPU node
# without network access"): runs benchmarks/gpu_check.py with the machine's python3 and the packages of
# `make device-kit`, and writes the filled page and the log to $OUT. Extra arguments go to gpu_check.py
# (e.g. --dry_run, --only train:recommended).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
# nothing is installed (--no_install is accepted for older copies of gpu_check.py). The page is written in
# $out; copy it over docs/benchmarks.md.
cp docs/benchmarks.md "$out/benchmarks.md"
python3 benchmarks/gpu_check.py --no_install --docs "$out/benchmarks.md" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
