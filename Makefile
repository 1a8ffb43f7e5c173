# Two commands for a fresh machine: `make demo` and `make test`.
# Set-up is idempotent: it re-runs only when pyproject.toml or this file change.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmserve-installed
DEBIAN_PACKAGES := libb64-0d espeak-ng sox libsndfile1 chromium openssl redis-server

.PHONY: setup system-packages demo test test-fast bench clean

setup: $(STAMP)

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
	$(BIN)/pip install -q -e ".[train,server,bench,console,gateway,dev]"
	# The wheel carries a real tritonserver 2.51 + Python backend; its own Python API
	# (and that API's requirements) is not used, hence --no-deps.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

demo: setup
	$(BIN)/mmserve demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/mmserve bench --report

clean:
	rm -rf $(VENV) build artifacts .pytest_cache
