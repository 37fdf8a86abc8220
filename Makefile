# All set-up happens here, on a fresh machine, with no other step.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export DELINEO_DATA ?= $(abspath ../shared/data)
export NO_MKDOCS_2_WARNING := 1

.PHONY: install system-deps check-system test docs cli-docs run clean nnunet-venv nnunet-bench

install: $(STAMP)

# torch first, pinned, so the CPU wheel on local disk is used and no CUDA build is pulled.
$(STAMP): pyproject.toml Makefile package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,docs]'
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# Debian packages the tests use as real peers: dcmtk (echoscu/storescu/storescp), dicom3tools
# (dciodvfy), Chromium + ChromeDriver for the browser tests, plastimatch (RT Structure Set interop tests),
# Orthanc + orthanc-dicomweb (the PACS round trips: tests/dicom/test_orthanc.py, test_dicomweb.py).
# Needs root; skipped when all are present.
SYSTEM_TOOLS := storescu storescp echoscu dciodvfy chromium chromedriver plastimatch Orthanc
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools chromium chromium-driver plastimatch orthanc orthanc-dicomweb; \
	else echo "system tools present: $(SYSTEM_TOOLS)"; fi

# What the suite needs from outside the venv and could not get (not root: no apt-get). Loud, never silent:
# the tests that need these are skipped, and this says which and how to install them.
check-system:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	services=""; for svc in 5432:PostgreSQL 6379:Redis; do \
		(exec 3<>/dev/tcp/127.0.0.1/$${svc%%:*}) 2>/dev/null || services="$$services $${svc#*:}"; done; \
	if [ -n "$$missing$$services" ]; then \
		echo ""; echo "################################################################################"; \
		echo "#  WARNING: this was NOT the whole test suite."; \
		[ -z "$$missing" ] || { echo "#  Not installed:$$missing"; \
			echo "#  -> the DICOM node tests (dcmtk, dicom3tools), the browser tests (Chromium), the plastimatch interop tests and the Orthanc / DICOMweb tests were skipped."; \
			echo "#  Install them as root:  sudo make system-deps   (Debian/Ubuntu: dcmtk dicom3tools chromium chromium-driver plastimatch orthanc orthanc-dicomweb)"; }; \
		[ -z "$$services" ] || { echo "#  Not reachable on 127.0.0.1:$$services"; \
			echo "#  -> the PostgreSQL / Redis deployment tests were skipped (start them on ports 5432 / 6379)."; }; \
		echo "################################################################################"; fi

# make test: install, the Debian test peers when running as root (apt-get; otherwise a warning at the
# end), the layer contract (import-linter, pyproject.toml: an upward import or a circle fails), the whole
# suite, then the documentation built with --strict (a broken link or a renamed API fails).
test: install $(if $(IS_ROOT),system-deps)
	@rc=0; $(VENV)/bin/lint-imports --no-cache || rc=$$?; \
	$(VENV)/bin/pytest -q || rc=$$?; \
	$(MAKE) --no-print-directory docs || { [ $$rc -ne 0 ] || rc=1; }; \
	$(MAKE) --no-print-directory check-system; exit $$rc

# the documentation site under build/site (MkDocs, Material theme, mkdocstrings; no network at build or view)
docs: install
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
	@echo "documentation: $(abspath build/site/index.html)"

# re-write docs/cli.md from the command line's own --help (tests/cli/test_docs_cli.py fails when it differs)
cli-docs: install
	$(PY) -m delineo.cli.reference > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

# the web service (SQLite and the embedded queue under ./var, bundled models) and the DICOM node on
# port 11112; prints the URL and, on the first start, the admin password
run: install
	$(VENV)/bin/delineo serve --dicom-port 11112

# nnU-Net v2 at delineo's CPU budget (issue 20; benchmarks/results/nnunet-same-budget/README.md).
# nnunetv2 gets its own virtual environment (it is no dependency of delineo), torch pinned and
# installed FIRST so pip takes the CPU wheel on this disk (a looser pin pulls a multi-GB CUDA build).
# Data, preprocessed arrays and trained folds go under runs/nnunet/ (ignored). Every stage resumes.
NNUNET_VENV  := .venv-nnunet
NNUNET_ROOT  ?= runs/nnunet
NNUNET_HOURS ?= 1.5
NNUNET_DATASET ?= 501
nnunet-venv: $(NNUNET_VENV)/.installed
$(NNUNET_VENV)/.installed:
	test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	# nnunetv2 -> timm -> torchvision, and PyPI's torchvision does not load beside the CPU build of torch
	# 2.13.0 ("operator torchvision::nms does not exist"): torch 2.14.1 + torchvision 0.29.1, the pair on
	# this machine's disk (a CUDA build, ~5.5 GB, that runs on the CPU); named in both commands so that
	# pip keeps them
	$(NNUNET_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(NNUNET_VENV)/bin/python -m pip install -q nnunetv2==2.8.1 torch==2.14.1 torchvision==0.29.1
	touch $@

# convert, plan + preprocess (defaults), train 3d_fullres (fold all) for NNUNET_HOURS CPU-hours, predict
# the validation cases and score them with delineo's metrics (benchmarks/nnunet/run.sh all)
nnunet-bench: install nnunet-venv
	NNUNET_ROOT=$(NNUNET_ROOT) NNUNET_HOURS=$(NNUNET_HOURS) NNUNET_DATASET=$(NNUNET_DATASET) \
		nice -n 10 benchmarks/nnunet/run.sh all

clean:
	rm -rf $(VENV) out var

# The hn-ct training campaign (issue 39; configs/hn-ct-campaign.yaml): start or resume from the
# committed state in benchmarks/results/hn-campaign/state, nice, in the background, THREADS threads
# (1 by default: the other core stays for work). OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads
# made steps up to 4x slower on a shared CPU. The log is runs/hn-ct-campaign/train.log.
THREADS ?= 1
CAMPAIGN := configs/hn-ct-campaign.yaml
.PHONY: campaign campaign-stop campaign-commit
CAMPAIGN_PID := runs/hn-ct-campaign/pid
campaign: install
	@mkdir -p runs/hn-ct-campaign
	@if [ -f $(CAMPAIGN_PID) ] && kill -0 $$(cat $(CAMPAIGN_PID)) 2>/dev/null; then \
		echo "the campaign is already running (pid $$(cat $(CAMPAIGN_PID)))"; exit 0; fi; \
	OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$(THREADS) nohup nice -n 10 \
		$(VENV)/bin/delineo train --config $(CAMPAIGN) --threads $(THREADS) >> runs/hn-ct-campaign/train.log 2>&1 & \
	echo $$! > $(CAMPAIGN_PID); echo "campaign running (pid $$!), log: runs/hn-ct-campaign/train.log"

# ends the current epoch, saves the state, exits (SIGTERM); waits until it has
campaign-stop:
	@if [ -f $(CAMPAIGN_PID) ] && kill -TERM $$(cat $(CAMPAIGN_PID)) 2>/dev/null; then \
		while kill -0 $$(cat $(CAMPAIGN_PID)) 2>/dev/null; do sleep 5; done; echo "campaign stopped, state saved"; \
	else echo "the campaign is not running"; fi

# status.md is written first, so that the commit's summary (segments, last validation, the last
# quarter's judgement) is that of the state it commits
campaign-commit: install
	$(PY) benchmarks/campaign_status.py > /dev/null
	$(PY) benchmarks/campaign_commit.py
