# Quick start: `make demo` and `make test`. Both create .venv on first use and (re)install the project in
# strict editable mode before running, so a fresh clone with only Python 3.11 and pip needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

setup:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "latentzip needs Python 3.11 (found %d.%d); run make PYTHON=/path/to/python3.11" % v)'
	@test -x $(BIN)/python || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip; }
	$(BIN)/python -m pip install -q -e ".[test]" --config-settings editable_mode=strict

demo: setup
	$(BIN)/latentzip demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf build *.egg-info latentzip-demo .pytest_cache
