# The README's two commands. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q -c constraints.txt
OUT    ?= runs/demo
SEEDS  ?= 3

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.pkg: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.pkg
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.pkg

# Train, analyse and report on MNIST end to end (resumes where it stopped).
demo: $(VENV)/.pkg
	$(BIN)/lpntk data fetch mnist
	$(BIN)/lpntk demo --out $(OUT) --seeds $(SEEDS)

lint: $(VENV)/.test
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
