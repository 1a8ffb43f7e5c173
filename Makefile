# Two commands for a fresh machine: `make demo` and `make test`.
# Set-up is idempotent: it re-runs only when pyproject.toml or this file change.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmserve-installed
# checkov (the infrastructure scan of tests/test_deploy_files.py) in a venv of its own: its
# pins would downgrade packaging, networkx and python-dateutil in the main one.
CHECKOV_VENV  := artifacts/checkov-venv
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV       := checkov==3.3.30
DEBIAN_PACKAGES := libb64-0d espeak-ng sox libsndfile1 chromium openssl redis-server

.PHONY: setup system-packages demo test test-fast bench clean

setup: $(STAMP) $(CHECKOV_STAMP)

system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$missing >/dev/null; }; \
	fi

$(STAMP): pyproject.toml Makefile | system-packages
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[train,serving,server,bench,console,gateway,dev]"
	# The wheel carries a real tritonserver 2.51 + Python backend; its own Python API
	# (and that API's requirements) is not used, hence --no-deps.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

$(CHECKOV_STAMP): Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	[ -x $(CHECKOV_VENV)/bin/python ] || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q "$(CHECKOV)"
	$(CHECKOV_VENV)/bin/checkov --version >/dev/null
	touch $(CHECKOV_STAMP)

demo: setup
	$(BIN)/mmserve demo

test: setup
	$(BIN)/python -m pytest -q --durations=30

# A developer's loop: the unit and property tests, no server, training or browser (<= 2 min).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration" -p no:cacheprovider

bench: setup
	$(BIN)/mmserve bench --report

clean:
	rm -rf $(VENV) build artifacts .pytest_cache
