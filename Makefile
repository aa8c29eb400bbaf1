# oodbench: `make demo` runs the main job offline, `make test` runs the tests; both install first.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install demo test test-fast bench gpu-check lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install oodbench with its test tools (once; again when pyproject changes)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install ## Main job: train Glow on embedded Fashion-MNIST, score vs MNIST, write results/demo/
	$(VENV)/bin/oodbench demo

test: install ## The test suite (under 10 minutes on 2 CPU cores)
	$(PY) -m pytest -q

test-fast: install ## Tests without the end-to-end runs on real data
	$(PY) -m pytest -q -m "not slow"

bench: install ## Speed and memory benchmark -> bench.json
	$(PY) scripts/bench.py --precision 32-true,bf16-mixed --compile off,on --out bench.json

gpu-check: ## On a GPU machine: tests, speed, a 3-minute paper-size Glow -> results/gpu_check/gpu_check.json (under 8 min)
	scripts/gpu_check.sh results/gpu_check

lint: install ## Static checks
	$(VENV)/bin/ruff check oodbench tests scripts

clean: ## Remove runs, results and caches made by the demo and tests
	rm -rf runs results bench.json .pytest_cache
