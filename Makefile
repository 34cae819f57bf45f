# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv, torch first
# (a CPU build here; override TORCH_SPEC for another build), then dllm with its dev and serve extras (the
# OpenAI-compatible server is tested with the real openai client).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dllm-installed

.PHONY: demo test test-fast test-deepspeed test-eval install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,serve]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dllm demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs build dist *.egg-info

# DeepSpeed ZeRO-2/3 tests on CPU over gloo (deepspeed builds from source; its first run compiles a C++ op,
# about 3 minutes once per machine). Not part of `make test`, whose tests skip when deepspeed is absent.
test-deepspeed: $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[deepspeed]"
	$(PY) -m pytest -q tests/test_distributed.py -k deepspeed

# The lm-evaluation-harness adapter (optional extra `eval`; lm-eval pulls many packages, so it is not part of
# `make test`, whose lm-eval tests skip when it is absent). Offline: a local YAML task on local data.
test-eval: $(STAMP)
	$(PY) -m pip install --quiet -e ".[eval]"
	HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests/eval/test_lm_eval_adapter.py
