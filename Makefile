# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test
install:
	bash scripts/install.sh

quickstart: install
	$(VENV)/bin/think-rec quickstart

test: install
	$(PY) -m pytest -q -x --durations=15 tests
