# All set-up happens here, on a fresh machine, with no other step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export DELINEO_DATA ?= $(abspath ../shared/data)

.PHONY: install test run clean

install: $(STAMP)

# torch first, pinned, so the CPU wheel on local disk is used and no CUDA build is pulled.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(VENV)/bin/pytest -q

run: install
	$(VENV)/bin/delineo demo

clean:
	rm -rf $(VENV) out var
