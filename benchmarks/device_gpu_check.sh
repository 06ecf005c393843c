#!/usr/bin/env bash
# `make gpu-check` on a lent GPU machine that has PyTorch but fetches nothing (docs/benchmarks.md,
# "On a lent GPU machine"): runs benchmarks/gpu_check.py with the machine's python3 and the packages of
# `make device-kit`, and writes the filled page and the log to $OUT. Extra arguments go to gpu_check.py
# (e.g. --dry_run, --only train:recommended).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
# the machine cannot fetch bitsandbytes: the 24gb recipe's row says so. The page is written in $out (it
# comes back from there); copy it over docs/benchmarks.md here.
cp docs/benchmarks.md "$out/benchmarks.md"
python3 benchmarks/gpu_check.py --no_install --docs "$out/benchmarks.md" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
