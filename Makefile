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

# Two pytest runs side by side: the integration tests mostly wait on node processes (about half a
# core), so the in-process tests (about 110 s of CPU) run meanwhile on the other core. Their output
# follows the integration run's; the target fails if either run failed.
UNIT_TESTS := $(sort $(filter-out tests/integration/ tests/__pycache__/,$(wildcard tests/*/)))
test: $(STAMP) etcd
	@unit_log=$$(mktemp); \
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider $(UNIT_TESTS) >"$$unit_log" 2>&1 & unit=$$!; \
	trap 'kill $$unit 2>/dev/null' INT TERM; \
	$(BIN)/python -m pytest -q -m "not slow" tests/integration; integration=$$?; \
	wait $$unit; unit_status=$$?; \
	echo; echo "== $(UNIT_TESTS)"; cat "$$unit_log"; rm -f "$$unit_log"; \
	test $$integration -eq 0 && test $$unit_status -eq 0

demo: $(STAMP)
	$(BIN)/python -m cli.demo

bench: $(STAMP)
	$(BIN)/python bench/kv.py
	$(BIN)/python bench/search.py

clean:
	-$(BIN)/legion cluster down --dir .legion 2>/dev/null
	rm -rf $(VENV) .legion .pytest_cache
