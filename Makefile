# `make demo` and `make test` each set up .venv (if missing) under constraints.txt, then run.
# The audit extra (transformers, kronfluence) is installed too, so its tests run; kronfluence
# goes in with --no-deps: it declares torchvision, which cannot import beside the CPU torch.
# `make test-vision` sets up a second environment, .venv-vision, under constraints-vision.txt
# (torch 2.14.1 with torchvision 0.29.1 and timm, about 6 GB) and runs the tests marked vision.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VISION := .venv-vision
VISION_STAMP := $(VISION)/.installed

.PHONY: demo test test-vision lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,audit]"
	$(BIN)/pip install --quiet -c constraints.txt --no-deps kronfluence
	touch $(STAMP)

$(VISION_STAMP): pyproject.toml constraints-vision.txt
	test -x $(VISION)/bin/python || $(PYTHON) -m venv $(VISION)
	$(VISION)/bin/pip install --quiet -c constraints-vision.txt -e ".[dev,audit,vision]"
	$(VISION)/bin/pip install --quiet -c constraints-vision.txt --no-deps kronfluence
	touch $(VISION_STAMP)

demo: $(STAMP)
	$(BIN)/malleability diagnose --dataset digits
	$(BIN)/malleability reproduce --preset quick --out runs/quick

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/python -m pytest

test-vision: $(VISION_STAMP)
	$(VISION)/bin/python -m pytest -m vision

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(VISION) build src/*.egg-info
