# The two commands the README promises: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo emulator constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest --durations=12

emulator: install
	$(BIN)/python -m airflow_provider_kakaopose.emulator --port 8765

# Re-pin every dependency after changing pyproject.toml (run on a clean venv).
constraints: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^airflow-provider-kakaopose' > constraints.txt

clean:
	rm -rf $(VENV) .airflow .pytest_cache .ruff_cache

demo: install
	$(BIN)/python scripts/demo.py
