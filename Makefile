# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench etcd

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The `--metadata etcd://` tests run a real etcd: Debian's etcd-server, installed here when it is missing.
etcd:
	@command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server; } \
		|| { echo "make test needs etcd: install Debian's etcd-server (apt-get install etcd-server)" >&2; exit 1; }

test: $(STAMP) etcd
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m cli.demo

bench: $(STAMP)
	$(BIN)/python bench/kv.py
	$(BIN)/python bench/search.py

clean:
	-$(BIN)/legion cluster down --dir .legion 2>/dev/null
	rm -rf $(VENV) .legion .pytest_cache
