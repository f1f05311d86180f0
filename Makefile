# advise-cache: `make demo` runs the pipeline on the built-in synthetic dataset,
# `make test` runs the tests. Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/advise-cache
# No weights or datasets are downloaded at run time: fail fast instead of retrying the hub.
export HF_HUB_OFFLINE ?= 1

DEMO ?= demo
DEVICE ?= auto
SEED ?= 0
# Ablations: comma-separated stores (default: the synthetic ones, made on first use),
# epochs of PRP pretraining and of fine-tuning, output folder, runs at once (default: one per GPU
# on a GPU, else one per usable core, at most one per 2 GiB of available memory), FULL=1 for the
# full study where no GPU is (the default there is CPU-sized), and any other flag of
# pipelines.studies.ablation in ARGS (e.g. ARGS=--dry-run: the plan and its ETA only).
CACHE ?=
EPOCHS ?=
FT_EPOCHS ?=
ABLATION_OUT ?= runs/ablations
JOBS ?=
FULL ?=
ARGS ?=
ABLATION_ARGS = --out $(ABLATION_OUT) --device $(DEVICE) --seed $(SEED) $(if $(JOBS),--jobs $(JOBS)) \
	$(if $(CACHE),--cache $(CACHE)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(FT_EPOCHS),--ft-epochs $(FT_EPOCHS)) \
	$(if $(FULL),--full) $(ARGS)
ABLATIONS = spatial-res channel-dim tmm-depth tmm-width temporal ifm storage

.PHONY: venv install test test-fast demo lint clean bench-extract bench-writer bench-loader bench-bucket bench-efficiency bench-gpu bench-gpu-extract \
	bench-gpu-train bench-decode \
	$(addprefix ablation-,$(ABLATIONS))

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -e '.[dev]'
	touch $@

# `advise-cache` on your PATH: a link to the venv's command in $(BIN) (on PATH in most shells;
# otherwise `source .venv/bin/activate`). The venv holds an editable install of this checkout.
BIN ?= $(HOME)/.local/bin
install: venv
	mkdir -p $(BIN)
	ln -sf $(abspath $(CLI)) $(BIN)/advise-cache
	@case ":$$PATH:" in *":$(BIN):"*) echo "advise-cache -> $(abspath $(CLI))";; \
		*) echo "advise-cache is in $(BIN), which is not on your PATH: add it, or run: source $(VENV)/bin/activate";; esac

test: venv
	$(PY) -m pytest

# The developer's loop: every test not marked slow (pyproject.toml's markers), under 2 minutes.
test-fast: venv
	$(PY) -m pytest -m "not slow"

# ruff's rules are in pyproject.toml; CI runs this before the tests. `ruff format .` mends what
# the second line finds.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: venv
	$(PY) -m pipelines.studies.demo --out $(DEMO) --device $(DEVICE) --seed $(SEED)

bench-extract: venv
	$(PY) -m pipelines.benchmarks.extract

bench-writer: venv
	$(PY) -m pipelines.benchmarks.extract_writer

bench-loader: venv
	$(PY) -m pipelines.benchmarks.loader

# Issue 21: what stored augmented views buy on the synthetic shifted family (README, BENCHMARKS.md).
.PHONY: study-views
study-views: venv
	$(PY) -m pipelines.studies.views

bench-bucket: venv
	$(PY) -m pipelines.benchmarks.bucket

bench-efficiency: venv
	$(PY) -m pipelines.benchmarks.efficiency

# Every GPU figure in two commands of under 5 minutes each (one device call each), both opened by
# a ~20 s pre-flight (CUDA, versions, the direct shard reader and writer, a one-batch extraction on
# cuda:0 and cuda:1 compared): extraction; then the loader and training from the cache vs a
# GPU-resident batch and the paper's Table 6. With $OUT set, results (BENCHMARKS.json's rows and
# the .md rendered from them) go under it; `python -m pipelines.sections --merge OUT/BENCHMARKS.json`
# takes them into this checkout's. For a CUDA machine that has torch but no package registry (no venv is made):
# run `../shared/device/fetch-wheels.sh av` where pip works, carry .whl, start with the install
# line it prints, then `make bench-gpu-extract` and `make bench-gpu-train`. On a machine without
# a GPU, `make bench-gpu GPU_DEVICE=cpu GPU_PYTHON=.venv/bin/python` runs the same at CPU sizes.
GPU_PYTHON ?= python3
GPU_DEVICE ?= cuda
GPU_RUN = PYTHONPATH=$(CURDIR):$$PYTHONPATH $(GPU_PYTHON)
bench-gpu: bench-gpu-extract bench-gpu-train
bench-gpu-extract:
	$(GPU_RUN) -m pipelines.benchmarks.gpu extract --device $(GPU_DEVICE)
bench-gpu-train:
	$(GPU_RUN) -m pipelines.benchmarks.gpu train --device $(GPU_DEVICE)

bench-decode: venv
	$(PY) -m pipelines.benchmarks.decode

$(addprefix ablation-,$(ABLATIONS)): ablation-%: venv
	$(PY) -m pipelines.studies.ablation $* $(ABLATION_ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache
