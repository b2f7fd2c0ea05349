# Thin aliases. `make demo` and `make test` work on a fresh machine: they create the venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The Python that makes the venv (or the venv's own, once made) must be 3.10-3.12: autofaiss
# 2.18 pins numpy<2, which has no wheel for 3.13 (pyproject's requires-python). Stop at once,
# before pip spends minutes failing to build numpy.
PYTHON ?= python3
SUPPORTED_PYTHONS := 3.10 3.11 3.12
BASE_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),default)),)
PY_VERSION := $(shell $(BASE_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(filter $(PY_VERSION),$(SUPPORTED_PYTHONS)),)
$(error $(BASE_PY) is Python $(or $(PY_VERSION),?): clip-index installs on Python 3.10 to 3.12 only (autofaiss 2.18 pins numpy<2, which has no wheel for 3.13); run make with PYTHON=python3.12 or python3.11, or remove a $(VENV) made with another Python)
endif
endif
STAMP := $(VENV)/.installed-stamp
# no hub access in tests and the demo: fail fast instead of retrying for a minute
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install system-deps demo test test-fast lint compile bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins the whole tree (torch 2.14.1 + torchvision 0.29.1, numpy<2,
	# pyarrow 25.0.1, faiss-cpu 1.13.2: see the version traps in README.md)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# clip-retrieval's own ClipClient, in a venv of its own (its pins clash with ours)
	sh scripts/install-clip-retrieval-client.sh bench/.venvs/clip-retrieval
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/clip-index demo --work-dir .demo

# chromium for the search page's browser test (apt; that one test skips, saying why, without it)
system-deps:
	sh scripts/install-system-deps.sh || echo "warning: system packages not installed"

test: install system-deps
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check clip_index components pipelines tests bench compile.py scripts
	$(VENV)/bin/mypy clip_index components pipelines
	$(PY) scripts/gpu_constraints.py --check

compile: install
	$(PY) compile.py --output-dir compiled --image-tag $${IMAGE_TAG:-dev}

bench: install
	$(PY) -m bench.download.run
	$(PY) -m bench.embed.run
	$(PY) -m bench.index.run

# On a machine with an NVIDIA GPU, after `make install`: prints the GPU and driver, fails with
# "no GPU" when torch sees none, then the gpu tests and the GPU benchmark (>= 60 s steady state,
# GPU utilisation, device- vs CPU-decoded rows): bench/embed/gpu_check.py.
gpu-check:
	@test -x $(PY) || { echo "gpu-check: $(PY) not found: run make install first"; exit 2; }
	$(PY) -m bench.embed.gpu_check

clean:
	rm -rf .demo compiled .pytest_cache
