# The two quick-start commands: `make demo` and `make test`. Each builds .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv bench bench-recipe mutation mutation-sample clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps janggu==0.10.2
	$(BIN)/pip install --quiet -e '.[test,cluster]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/xmodal study run demo --out runs/demo --fresh
	HF_HUB_OFFLINE=1 $(BIN)/xmodal report runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --cov=xmodal --cov-report=term

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m 'not slow'

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/otdd.py

# The default recipe against the domain baselines (about 40 min on 2 cores): docs/benchmarks.md
bench-recipe: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/recipe.py --threads 1
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/recipe.py --heldout --threads 1
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/precision.py

# Mutation testing of the science modules (mutmut, settings in pyproject.toml [tool.mutmut]).
# Not part of CI. `make mutation-sample`: a seeded random sample of PER_MODULE mutants of each
# module (about two hours on 2 cores), then kill rates with 95% CIs and the survivors.
# `make mutation`: every mutant (many hours). One module: make mutation MUTANTS='xmodal.metrics*'
MUTANTS ?=
PER_MODULE ?= 80
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e '.[mutation]'
	HF_HUB_OFFLINE=1 $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results

mutation-sample: $(STAMP)
	$(BIN)/pip install --quiet -e '.[mutation]'
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python tools/mutation_sample.py run --per-module $(PER_MODULE)
	$(BIN)/python tools/mutation_sample.py report

clean:
	rm -rf $(VENV) runs
