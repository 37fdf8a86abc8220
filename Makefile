# All set-up happens here, on a fresh machine, with no other step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export DELINEO_DATA ?= $(abspath ../shared/data)

.PHONY: install system-deps test run clean

install: $(STAMP)

# torch first, pinned, so the CPU wheel on local disk is used and no CUDA build is pulled.
$(STAMP): pyproject.toml Makefile package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# Debian packages the tests use as real peers: dcmtk (echoscu/storescu/storescp), dicom3tools
# (dciodvfy), Chromium + ChromeDriver for the browser tests. Needs root; skipped when all are present.
SYSTEM_TOOLS := storescu storescp echoscu dciodvfy chromium chromedriver
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools chromium chromium-driver; \
	else echo "system tools present: $(SYSTEM_TOOLS)"; fi

test: install
	$(VENV)/bin/pytest -q

# the web service (SQLite and the embedded queue under ./var, bundled models) and the DICOM node on
# port 11112; prints the URL and, on the first start, the admin password
run: install
	$(VENV)/bin/delineo serve --dicom-port 11112

clean:
	rm -rf $(VENV) out var
