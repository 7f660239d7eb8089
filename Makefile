# recfunnel: the two commands are `make demo` and `make test`; both build the environment first
# when it is missing. The venv is cached outside the clone, keyed by the lock files' hash, so
# clones and CI runs on the same machine share it and a changed lock builds a new one.
SHELL := /bin/bash
PYTHON ?= python3.11
RECFUNNEL_HOME ?= $(HOME)/.cache/recfunnel
LOCK_HASH := $(shell cat requirements.lock requirements-server.lock | sha256sum | cut -c1-16)
VENV ?= $(RECFUNNEL_HOME)/venv-py311-$(LOCK_HASH)
# The clone itself is put on PYTHONPATH rather than installed, so one cached venv serves every clone.
RUN := PYTHONPATH=$(CURDIR) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/python
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist) for the two cores; TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS ?= 2
PYTEST := $(RUN) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: env demo run test test-fast bench lock shell kernel clean-env
env: $(VENV)/.complete

ifeq ($(origin VENV),command line)
# An environment you made yourself (conda's environment.yml, NVIDIA's Merlin container):
# used as it is, never built or deleted here.
$(VENV)/.complete:
	@test -x "$(VENV)/bin/python" || { echo "error: VENV=$(VENV) has no bin/python" >&2; exit 2; }
.PHONY: $(VENV)/.complete
else
$(VENV)/.complete:
	@scripts/build_env.sh "$(VENV)" "$(PYTHON)"
endif

demo: env  ## the whole pipeline on the embedded default data set
	$(RUN) -m recfunnel pipeline run --config $(CONFIG)

run: env  ## any recfunnel command: make run ARGS="schema"
	$(RUN) -m recfunnel $(ARGS)

test: env  ## the test suite, every tier
	$(PYTEST) $(PYTEST_ARGS)

# The tiers are pytest markers (pyproject.toml); PYTEST_ARGS='-m server' runs one tier alone.
test-fast: env  ## the suite without training, servers or the container image (minutes)
	$(PYTEST) -m "not training and not server and not slow" $(PYTEST_ARGS)

bench: env  ## every benchmark; results go to benchmarks/results/ and BENCHMARKS.md
	$(RUN) benchmarks/bench_data.py
	$(RUN) benchmarks/bench_dataset.py
	$(RUN) benchmarks/bench_evaluation.py
	$(RUN) benchmarks/bench_retrieval_ml100k.py
	$(RUN) benchmarks/bench_training.py
	$(RUN) benchmarks/bench_demo_models.py
	$(RUN) benchmarks/bench_ranker_ablations.py --demo-run runs/demo --ml-run runs/bench-ml100k
	$(RUN) benchmarks/bench_serving.py
	$(RUN) benchmarks/bench_experiments.py
	$(RUN) benchmarks/bench_funnel_stages.py
	$(RUN) benchmarks/bench_demo_blend.py
	$(RUN) benchmarks/bench_demo_seeds.py
	$(RUN) benchmarks/bench_scale.py
	$(RUN) benchmarks/bench_scale.py --sizes 100m

lock:  ## re-resolve requirements.in into requirements.lock (needs the registry)
	rm -rf "$(RECFUNNEL_HOME)/lock-venv" && $(PYTHON) -m venv "$(RECFUNNEL_HOME)/lock-venv"
	"$(RECFUNNEL_HOME)/lock-venv/bin/pip" install -q -r requirements.in
	{ head -2 requirements.lock; "$(RECFUNNEL_HOME)/lock-venv/bin/pip" freeze --all | grep -viE '^(nvidia-pytriton|pip|setuptools)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

shell: env  ## print how to use the environment by hand
	@echo "export PYTHONPATH=$(CURDIR) PATH=$(VENV)/bin:\$$PATH"

kernel: env  ## register the environment as the Jupyter kernel "recfunnel" (for your Jupyter)
	$(VENV)/bin/python -m ipykernel install --user --name recfunnel --display-name "recfunnel" \
		--env PYTHONPATH $(CURDIR) --env TF_CPP_MIN_LOG_LEVEL 2

clean-env:
	rm -rf "$(VENV)" "$(VENV).lock"
