# Quickstart targets. Each creates .venv with python3 and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo

.PHONY: demo test test-fast bench install install-dev install-bench device-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,gymnasium]"  # gymnasium: the oracle tests against Box2D
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,gymnasium]"
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-bench: $(VENV)/.installed-bench

## make demo: the whole World Models pipeline on pixel CartPole (cpu-small preset).
demo: install
	$(BIN)/wmj run --env CartPolePixels-v1 --preset cpu-small --out $(OUT)

## make test: the full test suite, two pytest workers (compilation is mostly single-threaded), one per test file.
test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

## make test-fast: the fast subset, for the inner loop.
test-fast: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

## make bench: the quick benchmark suite (regenerates benchmarks/BENCHMARKS.md).
bench: install-bench
	$(BIN)/wmj bench --quick

## make device-wheels: the pure-Python packages a lent GPU machine lacks (it has jax, flax, optax, chex, orbax),
## as wheels in .whl/ for benchmarks/device_check.sh. The versions are this project's (pip list in .venv).
DEVICE_WHEELS := evosax==0.3.2 dotmap==1.3.30 gymnax==1.0.1 gymnasium==1.3.0 farama-notifications==0.0.6 \
                 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1
device-wheels:
	rm -rf .whl && $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)
	@ls .whl && du -sh .whl

clean:
	rm -rf runs .pytest_cache
