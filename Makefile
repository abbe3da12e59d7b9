# `make demo` and `make test` each set up .venv (if missing) under constraints.txt, then run.
# The audit extra (transformers, kronfluence) is installed too, so its tests run; kronfluence
# goes in with --no-deps: it declares torchvision, which cannot import beside the CPU torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,audit]"
	$(BIN)/pip install --quiet -c constraints.txt --no-deps kronfluence
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/malleability diagnose --dataset digits
	$(BIN)/malleability reproduce --preset quick --out runs/quick

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info
