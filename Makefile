# `make check` runs everything CI runs: lint, format check, types, tests.
PY ?= .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: check lint imports types test format bench mutate cli-doc

check: lint imports types test

lint:
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# the layering of the stage packages (pyproject.toml [tool.importlinter], docs/architecture.md)
imports:
	$(dir $(PY))lint-imports

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest -q

format:
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

cli-doc:
	$(PY) -c 'from xlalign.cli import cli_reference; print(cli_reference(), end="")' > docs/cli.md

bench:
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_metrics.py

# Mutation testing of the study layer (opt-in, slow: see docs/testing.md). Narrow it with e.g.
# `make mutate MUTANTS='xlalign.metrics.bootstrap*'`. Results stay in mutants/ (git-ignored).
# MUTMUT_CHILDREN: mutants run at once (1 on a shared 2-core machine)
MUTMUT_CHILDREN ?= 2
MUTANTS ?= xlalign.metrics.bootstrap* xlalign.studies.layers* xlalign.studies.origin* \
           xlalign.studies.findings* xlalign.studies.lens* xlalign.studies.compare* \
           xlalign.data.corpora* xlalign.data.lexical*
mutate:
	$(PY) -m mutmut run --max-children $(MUTMUT_CHILDREN) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) tests/mutation_report.py
