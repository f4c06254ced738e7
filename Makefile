# Every target creates or reuses .venv and installs the project into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-purepython lint demo bench profile soak fuzz clean

BASE   := $(VENV)/.installed-base

# The demo needs only the package; tests and lint add their tools on top.
$(BASE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# msgpack's pure-Python build (what installs where its C extension cannot), on the tests
# that decode frames: the parent, the zygote and every compartment use it alike.
test-purepython: $(STAMP)
	MSGPACK_PUREPYTHON=1 $(PY) -m pytest tests/wire/test_wire.py tests/wire/test_hostile_wire.py \
		tests/wire/test_channel.py tests/wire/test_trailing_bytes.py tests/parent/test_runtime.py \
		tests/hostile tests/parent/test_remote_logging.py tests/child/test_stdio_forward.py

lint: $(STAMP)
	$(VENV)/bin/ruff check compartments tests examples bench
	$(VENV)/bin/mypy --strict compartments
	$(VENV)/bin/mypy --strict tests/api/typed_usage.py
	$(VENV)/bin/pyright tests/api/typed_usage.py
	$(VENV)/bin/lint-imports

demo: $(BASE)
	$(PY) -m examples.ipc_db_server

bench: $(STAMP)
	$(PY) -m bench

profile: $(STAMP)
	$(PY) -m bench.profile

soak: $(STAMP)
	COMPARTMENTS_SOAK=1 $(PY) -m pytest -m soak -s --timeout=1800

fuzz: $(STAMP)
	COMPARTMENTS_FUZZ_EXAMPLES=$${COMPARTMENTS_FUZZ_EXAMPLES:-20000} $(PY) -m pytest -m fuzz --timeout=0 --hypothesis-show-statistics

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
