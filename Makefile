# genrec_jax: `make demo` runs the main pipeline, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/ml100k
# pyproject extras installed with the package: cuda12, cuda13 or tpu puts
# JAX's accelerator wheels in the venv (`make demo EXTRAS=cuda12`).
EXTRAS ?=
# JAX platform of `make demo`: empty = JAX's choice (the accelerator when
# one is present, else the CPU); `make demo PLATFORM=cpu` forces the CPU,
# as JAX_PLATFORMS=cpu in the environment does.
PLATFORM ?= $(JAX_PLATFORMS)
STAMP := $(VENV)/.installed$(if $(EXTRAS),-$(EXTRAS))

comma := ,

.PHONY: setup demo test bench-venv front-page clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q -e '.[test$(if $(EXTRAS),$(comma)$(EXTRAS))]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JAX_PLATFORMS=$(PLATFORM) \
	  $(PY) -m binaries.run_pipeline --config=configs/pipeline.py:ml100k --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -n 2 tests

# The README's generated front page from the committed results archive
# (docs/results; tools/front_page.py --archive adds a new run to it).
front-page: setup
	$(PY) tools/front_page.py --archive docs/results

# The separate torch venv (.venv-torch: pyproject's `torch` extra +
# transformers) for the torch side of the beam_search and decoder
# benchmarks and tools/make_parity_fixtures.py; tests/weights_test.py
# creates it on demand the same way (about 30 s).
bench-venv:
	$(PYTHON) tools/torch_venv.py

clean:
	rm -rf runs
