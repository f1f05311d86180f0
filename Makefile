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

.PHONY: venv test demo lint clean bench-extract

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: venv
	$(PY) -m pytest

demo: venv
	$(PY) pipelines/demo.py --out $(DEMO) --device $(DEVICE) --seed $(SEED)

bench-extract: venv
	$(PY) pipelines/bench_extract.py

clean:
	rm -rf $(DEMO) .pytest_cache
