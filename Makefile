# Two commands do everything: `make test` and `make demo` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PKGS := debootstrap systemd-container util-linux

.PHONY: test lint unit root system demo demo-scratch bench deps system-deps clean

deps: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian packages the root and system tests need (debootstrap, systemd-nspawn).
system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	fi

lint: deps
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy

# pytest's exit 5 (no tests collected) is a failure here like any other non-zero exit.
test: deps system-deps lint
	$(BIN)/python -m pytest tests

unit: deps
	$(BIN)/python -m pytest tests/unit
root: deps
	$(BIN)/python -m pytest tests/root
system: deps system-deps
	$(BIN)/python -m pytest tests/system

demo: deps system-deps
	$(BIN)/python tools/demo.py

demo-scratch: deps
	$(BIN)/python tools/demo_scratch.py

# The benchmarks plot with matplotlib (the plots extra), which the tests do not need.
$(VENV)/.plots: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,plots]'
	touch $@

bench: deps system-deps $(VENV)/.plots
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
