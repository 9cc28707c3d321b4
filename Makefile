# The two commands the README promises: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

ENGINE_VENV  := .venv-engine
ENGINE_BIN   := $(ENGINE_VENV)/bin
ENGINE_STAMP := $(ENGINE_VENV)/.installed
ENGINE_PORT  ?= 8766

NORFAIR_VENV  := .venv-norfair
NORFAIR_STAMP := $(NORFAIR_VENV)/.installed

.PHONY: install test lint demo emulator constraints clean engine-install engine demo-engine engine-constraints test-matrix dist \
	norfair-install

# Airflow versions of `make test-matrix` (latest patch of each supported minor; see docs/installation.md).
MATRIX_VERSIONS ?= 2.11.2 3.0.6 3.1.8 3.2.2 3.3.2

# The package with every optional extra (the tests use them all), plus the repository's own requirements: the
# dependency groups of pyproject.toml (PEP 735; pip >= 25.1), which are never published with the package.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[redis,pictures,pandas]' \
		--group test --group test-s3 --group cluster --group dist --group lint --group tracking-eval
	touch $(STAMP)

install: $(STAMP)

# The local pose engine's own environment: the `engine` dependency group of pyproject.toml (mediapipe needs
# protobuf < 5, Airflow's current dependencies >= 5, so it does not belong in .venv) plus this package without its
# Airflow dependencies.
$(ENGINE_STAMP): pyproject.toml constraints-engine.txt
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_BIN)/python -m pip install -q --upgrade pip
	$(ENGINE_BIN)/python -m pip install -q -c constraints-engine.txt --group engine
	$(ENGINE_BIN)/python -m pip install -q --no-deps -e .
	touch $(ENGINE_STAMP)

engine-install: $(ENGINE_STAMP)

# The tracking benchmark's anchor (benchmarks/tracking.py runs norfair there): the `tracking-anchor` group in its
# own environment, as norfair 2.3 needs numpy < 2 and rich < 15 (docs/tracking.md).
$(NORFAIR_STAMP): pyproject.toml constraints-norfair.txt
	$(PYTHON) -m venv $(NORFAIR_VENV)
	$(NORFAIR_VENV)/bin/python -m pip install -q --upgrade pip
	$(NORFAIR_VENV)/bin/python -m pip install -q -c constraints-norfair.txt --group tracking-anchor
	touch $(NORFAIR_STAMP)

norfair-install: $(NORFAIR_STAMP)

# Serve the API with real poses from the local engine (docs/engine.md).
engine: engine-install
	$(ENGINE_BIN)/python -m airflow_provider_kakaopose.emulator --engine mediapipe --port $(ENGINE_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint engine-install
	KAKAO_POSE_REQUIRE_ENGINE=1 $(BIN)/python -m pytest --durations=12

# The release files: sdist + wheel into dist/ (built in an isolated environment, the wheel from the sdist), checked
# by twine (--strict) and by scripts/check_dist.py (licence files, metadata, no test or tool requirements, the
# provider entry point, what the sdist holds).
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python scripts/check_dist.py dist

# The Airflow-facing tests on every supported Airflow minor, one pinned environment each (.venv-matrix/),
# and a table of version x result. `make test-matrix MATRIX_VERSIONS="2.11.2 3.0.6"` for some.
test-matrix:
	$(PYTHON) scripts/matrix.py --versions $(MATRIX_VERSIONS)

emulator: install
	$(BIN)/python -m airflow_provider_kakaopose.emulator --port 8765

# Re-pin every dependency after changing pyproject.toml (run on a clean venv).
constraints: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^airflow-provider-kakaopose' > constraints.txt

engine-constraints: engine-install
	$(ENGINE_BIN)/python -m pip freeze --exclude-editable | grep -v '^airflow-provider-kakaopose' > constraints-engine.txt

clean:
	rm -rf $(VENV) $(ENGINE_VENV) $(NORFAIR_VENV) .venv-matrix .airflow .pytest_cache .ruff_cache dist build

demo: install
	$(BIN)/python scripts/demo.py

# The demo against the local engine: real poses on real photos and a synthetic video.
demo-engine: install engine-install
	$(BIN)/python scripts/demo.py --engine

# A local, production-like deployment on loopback (scripts/cluster.py; `python scripts/cluster.py --help`):
# PostgreSQL, Redis, api-server, scheduler, dag-processor, 2 Celery workers, 2 triggerers and the emulator.
# `make cluster CLUSTER_ARGS="--workers 3 --emulator-args '--latency 0.3'"`, `make cluster-down CLUSTER_ARGS=--wipe`.
CLUSTER_ARGS ?=
.PHONY: cluster cluster-down

cluster: install
	$(BIN)/python scripts/cluster.py up $(CLUSTER_ARGS)

cluster-down:
	$(BIN)/python scripts/cluster.py down $(CLUSTER_ARGS)
