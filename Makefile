# `make demo` and `make test` work on a fresh machine with Python 3.11 (see .ci/run for apt packages).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Portable llama.cpp build (the wheel is compiled once, ~5 min).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup test test-slow test-all lint typecheck demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples

typecheck: setup
	$(PY) -m pyright

demo: setup
	$(PY) -m bastion.cli demo

bench: setup
	$(PY) -m bastion.cli bench

clean:
	rm -rf $(VENV) .bastion .pytest_cache
