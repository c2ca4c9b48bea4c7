# Two entry points for a fresh machine: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; pick another build with e.g. `make demo TORCH_SPEC="torch==2.14.1"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(BIN)/fedlottery run configs/default.yaml --out runs/default --overwrite

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
