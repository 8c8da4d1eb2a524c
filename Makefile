# One-command set-up on a fresh machine (Python 3.11, pip, gcc only).
# `make demo` runs the main job; `make test` runs the test suite. Both create the venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch must be installed before anything that depends on torch,
# otherwise pip resolves `torch` to a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv demo test test-fast lint bench clean

$(BIN)/facekd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/facekd

venv: $(BIN)/facekd

demo: venv
	$(BIN)/facekd demo $(ARGS)

test: venv
	$(BIN)/python -m pytest -q $(ARGS)

# The fast tier: everything but the end-to-end tests that train small models (marked slow).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
