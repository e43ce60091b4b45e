# Two entry points: `make quickstart` (the main job) and `make test`. Both build .venv from the repo's own files.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; a GPU machine can pass TORCH_SPEC='torch>=2.11' to keep the torch it has.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install quickstart test
$(BIN)/lrkv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/lrkv

quickstart: install
	$(BIN)/lrkv sweep run sweeps/quickstart.yaml --if-exists resume

test: install
	bash tests/system.sh
	$(BIN)/pytest -q
