# Two commands on a fresh machine (see README):
#   make dev    set up, then run the whole stack embedded (sluice dev)
#   make test   set up, then run the static checks and the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: dev test check setup

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

dev: setup
	$(BIN)/sluice dev

check: setup
	$(BIN)/ruff check .
	$(BIN)/mypy schemas broker workers ingress sluice
	$(BIN)/lint-imports

test: check
	$(BIN)/pytest -q
