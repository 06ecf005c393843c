#!/usr/bin/env bash
# The built-in world's branch at GPU scale, in one run on a GPU node without network
# (experiments/world/README.md, "A quick check on a GPU node"): 16384 world clips, the shipped branch
# trained on for FIT_TIME (default 4 min) at batch 32 on the shipped SVD
# (experiments/world/configs/gpu_branch_quick.yaml), then the one-step probe on the test groups and on
# the `seen` groups. Writes to $OUT (default /tmp/interdyn-device-out): the probes' tables, the training
# log and the branch. Extra arguments go to `interdyn fit` (e.g. --data.init_args.batch_size 64).
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device_env.sh
world=data/shards/world_large
run=runs/world_gpu_quick
python3 -m data_prep.synthetic --out "$world" --size 64 64 --builtin_world --frames 14 --fps 7 \
    --train "${TRAIN_CLIPS:-16384}" --val 64 --test_groups 16 --seen_groups 16 --workers "$(nproc)" || exit 1
python3 -m interdyn.commands.cli fit --config configs/demo.yaml --config experiments/world/configs/gpu_branch_quick.yaml \
    --model.controlnet weights/world/branch --trainer.max_time "${FIT_TIME:-00:00:04:00}" "$@" \
    2>&1 | tee "$out/fit.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
# how many steps the time allowed (the GPU's step time, for sizing longer runs)
python3 -c "import torch; c = torch.load('$run/checkpoints/last.ckpt', map_location='cpu', weights_only=False); \
print('steps trained:', c['global_step'])" | tee -a "$out/fit.log"
python3 -m interdyn.commands.cli export --ckpt_path "$run/checkpoints/last.ckpt" --out "$run/weights" \
    --dtype float16 --overwrite || exit 1
mkdir -p "$out/branch" && cp "$run/weights/"* "$out/branch/"
status=0
for split in test seen; do
    python3 -m experiments.world.onestep --svd weights/world/svd --controlnet "$run/weights" \
        --test_shards "$world/$split/*.tar" --sigmas 5,20,50,700 --out "$out/onestep_$split" || status=1
done
exit "$status"
