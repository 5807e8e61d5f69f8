VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

AZURITE := node_modules/.bin/azurite-blob

.PHONY: test lint demo replay-demo soak fuzz bench image-check clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(AZURITE): package.json
	npm install --no-audit --no-fund --no-package-lock --loglevel=error
	touch $(AZURITE)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

test: lint $(AZURITE)
	$(VENV)/bin/pytest -q -n 2

demo: $(STAMP) $(AZURITE)
	$(PY) scripts/demo.py

replay-demo: $(STAMP)
	@mkdir -p .demo
	AML_WORKER_LOG_FORMAT=console $(VENV)/bin/aml-event-worker replay \
		--rules examples/rules.yaml --source file:examples/stream.jsonl --dry-run \
		--output - --summary-json .demo/replay-summary.json --dead-letter .demo/deadletter.jsonl

# The long reliability experiments (tests/chaos; `make test` runs their short forms).
soak: $(STAMP) $(AZURITE)
	AML_WORKER_SOAK=full $(VENV)/bin/pytest -q -s tests/chaos

# Hostile event content, long form (`make test` runs one `run` example and 300 pipeline
# examples): figures to bench/results/fuzz.json.
fuzz: $(STAMP) $(AZURITE)
	AML_WORKER_FUZZ=full $(VENV)/bin/pytest -q tests/test_fuzz.py

# The performance bench: figures to bench/results/*.json.
bench: $(STAMP) $(AZURITE)
	$(PY) bench/run.py

# Build the container image for real (debootstrap base + buildah) and run it as non-root.
image-check:
	bash scripts/image-check.sh

clean:
	rm -rf $(VENV) node_modules .demo .pytest_cache .ruff_cache .hypothesis .image-cache
