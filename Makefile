# Two entry points for a fresh machine: `make demo` (set up + main job) and `make test` (set up + every test, what CI
# runs); `make test-fast` leaves out the end-to-end runs marked slow, for the edit-test loop.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; pick another build with e.g. `make demo TORCH_SPEC="torch==2.14.1"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast setup clean

setup: $(VENV)/.installed

# pip prints what it collects and installs as it goes (a few minutes on a fresh 2-core machine, most of it in
# step 3), so the set-up is never silent.
$(VENV)/.installed: pyproject.toml
	@echo "== set-up 1/3: creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "== set-up 2/3: installing $(TORCH_SPEC)"
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	@echo "== set-up 3/3: installing fedlottery with Flower, Ray, flwr-datasets, scikit-learn, matplotlib, pytest, TensorBoard and MkDocs"
	$(BIN)/python -m pip install -e ".[test]"
	@echo "== set-up done: $(VENV) is ready"
	touch $@

# `make test` adds the cluster extra (ray[default]: Ray's dashboard and job submission) so that the suite's
# `ray job submit` test runs; `make demo` and `make setup` leave it out, because with it every private local
# run's Ray helpers load more (benchmarks/results/startup_cluster_extra.md: a median +1.5 s to the first round).
$(VENV)/.cluster-installed: $(VENV)/.installed
	@echo "== set-up for the tests: adding the cluster extra (ray[default]) for tests/test_ray_cluster.py"
	$(BIN)/python -m pip install -e ".[test,cluster]"
	touch $@

demo: setup
	$(BIN)/fedlottery run configs/default.yaml --out runs/default --overwrite

test: setup $(VENV)/.cluster-installed
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs
