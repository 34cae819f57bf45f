"""benchmarks/train_throughput.py: its FLOP count on hand-made batches, and a whole run at a tiny size (the speeds
are meaningless there; the modes, the batches they train on, the ratios and the memory probe are not)."""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import multiprocessing.forkserver
import runpy
import subprocess
import sys

import pytest
import torch

from tests.helpers import alpaca_fixture, benchmark_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("train_throughput.py") as module:
        yield module


def test_flops_count_the_head_where_it_runs_and_attention_within_documents(bench):
    args = argparse.Namespace(hidden=256, layers=2)
    padded = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.tensor([[1] * 8, [1] * 4 + [0] * 4]),
              "labels": torch.tensor([[-100] * 2 + [5] * 6, [-100] * 2 + [5] * 2 + [-100] * 4])}
    body = 2 * (2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 704)  # q, o (256 x 256), k, v (256 x 64), SwiGLU 704
    attention = 12 * 2 * 256 * (8 * 8 + 4 * 8)  # every query (padding too) of a row sees the row's real keys
    assert bench.step_flops(args, 1000, "ar", padded, 0.5) == 6 * body * 16 + 6 * 256 * 1000 * 16 + attention
    masked = bench.step_flops(args, 1000, "mdlm_masked_head", padded, 0.5)
    assert masked == 6 * body * 16 + 6 * 256 * 1000 * 0.5 * 8 + attention  # the head at half of the 8 answer tokens
    packed = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "labels": padded["labels"][:1],
              "document_ids": torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]])}
    assert bench.step_flops(args, 1000, "mdlm_packed", packed, 0.5) == (
        6 * body * 8 + 6 * 256 * 1000 * 0.5 * 6 + 12 * 2 * 256 * (3 * 3 + 4 * 4))


def _run_script(script: str, argv: list[str]) -> str:
    """``python SCRIPT ARGV``'s stdout, in a process forked from a forkserver (see :func:`forked_probes`)."""
    sys.argv = [script, *argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(script, run_name="__main__")
    return out.getvalue()


@pytest.fixture
def forked_probes(bench, monkeypatch):
    """The benchmark's memory probes (one fresh ``python train_throughput.py --only MODE:VOCAB`` process each) in
    processes forked from one forkserver that imported torch, transformers and dllm once, started with the
    environment the benchmark gives its probes: each probe still runs alone in a process that trained nothing
    before it, without paying the interpreter's start-up and the imports once per mode."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "datasets", "dllm.core.trainers.mdlm_trainer",
                                    "dllm.pipelines.llama3"])
    probe_env = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # what peak_memory_mib adds to the environment
    for name, value in probe_env.items():
        monkeypatch.setenv(name, value)
    pool = context.Pool(1, maxtasksperchild=1)  # a new forked process for every probe
    calls = []

    def run(argv, *, env, check, **kwargs):
        assert argv[:2] == [sys.executable, bench.__file__] and check and probe_env.items() <= env.items()
        calls.append(argv[argv.index("--only") + 1])
        return subprocess.CompletedProcess(argv, 0, pool.apply(_run_script, (argv[1], argv[2:])), "")

    monkeypatch.setattr(bench, "subprocess", argparse.Namespace(run=run))
    try:
        yield calls
    finally:
        pool.close()
        pool.join()
        multiprocessing.forkserver._forkserver._stop()  # the next user starts its own, with its own environment


def test_a_tiny_run_measures_every_mode_and_packing_removes_padding(bench, tmp_path, forked_probes):
    data = alpaca_fixture(tmp_path / "alpaca.json", n=48)
    result = bench.main(["--data", str(data), "--vocab", "300", "--hidden", "64", "--layers", "1", "--seq", "64",
                         "--batch", "2", "--repeats", "2", "--threads", "1"])
    modes = result["vocab_300"]
    assert set(modes) == {"ar", "mdlm_full_head", "mdlm_masked_head", "mdlm_padded", "mdlm_padded_to_max",
                          "mdlm_packed"}
    assert result["matmul_peak_tflops"] > 0 and all(m["step_s"] > 0 and m["tflops"] > 0 for m in modes.values())
    assert modes["mdlm_padded_to_max"]["padding_fraction"] > modes["mdlm_padded"]["padding_fraction"] > 0
    assert modes["mdlm_packed"]["padding_fraction"] < 0.2  # ~14-token conversations fill rows of 64
    assert modes["mdlm_packed"]["useful_tokens_over_padded_to_max"] > 1.5
    assert all(m["step_adds_mib"] > 0 for m in modes.values())  # each mode's memory probe ran
    assert forked_probes == [f"{mode}:300" for mode in modes]  # once each, in its own process
    assert 0 < modes["mdlm_masked_head"]["step_over_ar"] and 0 < modes["mdlm_full_head"]["paired_step_over_ar"]
