# voxmesh: `make up` installs and runs; `make test` installs what tests need and runs them.
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
STAMP := .make
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
# apt is used only where the tools are missing (espeak-ng for test speech, chromium for the page test)
APT_PKGS := espeak-ng chromium

.PHONY: install up dev test lint bench bench-quick bench-micro livekit web clean

install: $(STAMP)/install

$(STAMP)/install: pyproject.toml
	$(PIP) install -q -e .
	@mkdir -p $(STAMP) && touch $@

up: install
	voxmesh up

dev: $(STAMP)/dev

$(STAMP)/dev: pyproject.toml
	$(PIP) install -q -e '.[dev]'
	@missing=""; for p in $(APT_PKGS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	fi
	@mkdir -p $(STAMP) && touch $@

livekit: $(BIN)/livekit-server

$(BIN)/livekit-server:
	bash scripts/install-livekit.sh $(BIN)

test: dev livekit lint
	$(PYTHON) -m pytest tests

# mypy must see the tree as the package voxmesh (the repo root is the package): a link
# named voxmesh in a temp dir gives it that name without an install.
MYPY_PACKAGES := -p voxmesh.mesh -p voxmesh.supervisor -p voxmesh.actors -p voxmesh.cli -p voxmesh.client

lint: dev
	@echo "lint: ruff + mypy (strict on mesh/, supervisor/, actors/, cli/, client/)"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	@d=$$(mktemp -d) && ln -s "$(CURDIR)" "$$d/voxmesh" && \
	  MYPYPATH="$$d" $(PYTHON) -m mypy --config-file pyproject.toml $(MYPY_PACKAGES); \
	  rc=$$?; rm -rf "$$d"; exit $$rc

bench: dev
	voxmesh bench

bench-quick: dev
	voxmesh bench --quick

bench-micro: dev
	$(PYTHON) -m pytest bench/micro --benchmark-only -p no:cacheprovider

web:
	cd web && npm ci && npm run build

clean:
	rm -rf $(STAMP) build *.egg-info
