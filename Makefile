# One command each, from a fresh clone (each does its own set-up into .venv):
#   make pipeline   run probe -> throughput -> scaling -> select -> baseline -> report (dvc repro --force)
#   make test       run the test suite
#   make test-fast  the suite without the end-to-end dvc/snakemake runs (the inner loop)
#   make test-slurm the pipeline on a real SLURM it starts (left out of `make test`; CI: .ci/run-slurm)
# Override TORCH to pick another build, e.g. a CUDA one (see README "GPU machines").
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup pipeline snakemake test test-fast test-slurm bench clean-reports

setup: $(VENV)/.installed

# torch first, on its own: the project's range is then already satisfied and pip fetches no other build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INSTALL_FLAGS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# --force: measure this machine afresh even where committed results are up to date
pipeline: setup
	$(BIN)/dvc repro --force

snakemake: setup
	$(BIN)/snakemake -c2

# Two workers, one test file each at a time (--dist loadfile keeps a file's shared fixtures -- a
# pipeline run in a temporary repository -- in one worker): 4.1 min instead of 7.4 on 2 idle cores.
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slurm"

# The inner loop, under 2 minutes: everything but the end-to-end runs of the real dvc and snakemake
# (marker e2e) and the tests that take several seconds each (marker slow); `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not e2e and not slow and not slurm"

# The tests marked slurm: a single-node SLURM started from Debian's slurm-wlm and munge (installed with
# apt-get where missing: root or password-less sudo), the small profile through `snakemake --profile`, and
# bench_cluster's smoke run. Minutes, and a scheduler of their own: one process, apart from `make test`.
test-slurm: setup
	$(BIN)/python -m pytest -q -m slurm

bench: setup
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-reports:
	rm -rf reports/probe reports/throughput reports/scaling reports/select reports/baseline reports/REPORT.md
