"""The demo end to end with a few training steps: it trains, saves a reloadable checkpoint and a loss plot, and
ends with the exact-match line."""

from __future__ import annotations

import re

import pytest

from dllm.demo.run import CharChatEncoder, warmup_cosine


def test_warmup_cosine_shape():
    assert warmup_cosine(0.0, 0.1, 0.1) == pytest.approx(1e-3)
    assert warmup_cosine(0.05, 0.1, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(1.0, 0.1, 0.1) == pytest.approx(0.1)


def test_char_chat_encoder_matches_tokenize_messages():
    from dllm.data.collator import tokenize_messages
    from dllm.demo.tasks import DEMO_ALPHABET, default_tasks, iter_examples, to_messages
    from dllm.utils.tokenizers import build_char_tokenizer

    tokenizer = build_char_tokenizer(DEMO_ALPHABET)
    encoder = CharChatEncoder(tokenizer, verify=0)
    stream = iter_examples(default_tasks(), seed=0)
    for _ in range(60):
        example = next(stream)
        assert encoder(example) == tokenize_messages(tokenizer, to_messages(example)["messages"])


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from transformers import AutoTokenizer

    from dllm.pipelines.llama3 import Llama3ForMaskedLM

    out = tmp_path / "demo"
    result = main_with(["--output_dir", str(out), "--max_steps", "6", "--train_minutes", "5",
                        "--num_eval_per_task", "4", "--num_hidden_layers", "2", "--hidden_size", "32",
                        "--intermediate_size", "64", "--per_device_train_batch_size", "8", "--logging_steps", "2",
                        "--eval_every_minutes", "0.0001"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"overall exact match: \d+\.\d% \(\d+/12\) in \d+ s", lines[-1]), lines[-1]
    assert result["steps"] == 6 and result["total"] == 12
    assert any("held-out exact match: sort" in line for line in lines)  # the in-training monitor ran
    assert (out / "loss.png").stat().st_size > 0
    model = Llama3ForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.is_causal is False and tokenizer.mask_token_id == 4


def main_with(argv):
    from dllm.demo.run import main

    return main(argv)
