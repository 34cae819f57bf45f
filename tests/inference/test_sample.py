"""``dllm sample``: prompts from arguments, text and JSONL files; JSONL out; flags over the saved settings; every
user mistake is one line on stderr and exit status 2 (the command run as a process)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.cli import main as cli_main
from dllm.core.sampling import DiffusionGenerationConfig, generate, generate_text, with_tokenizer_ids
from tests.helpers import checkpoint_without_mask_token, run_dllm_cases, tiny_llama_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The checkpoint loaded directly, and the saved settings: what the sampler gives without dllm sample."""
    model = AutoModelForMaskedDiffusion.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=8), tokenizer)
    return model, tokenizer, config


def answer_alone(reference, messages, **overrides) -> str:
    """One conversation answered in a batch of its own."""
    model, tokenizer, config = reference
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    out = generate(model, torch.tensor([ids]), replace(config, **overrides))
    row = out.sequences[0, len(ids):].tolist()
    row = row[: row.index(config.eos_token_id)] if config.eos_token_id in row else row
    return tokenizer.decode(row, skip_special_tokens=True)


def test_prompts_from_arguments_are_printed(tiny_checkpoint, reference, capsys):
    prompts = ["hello", "a longer prompt", "x"]
    assert cli_main(["sample", str(tiny_checkpoint), *prompts]) == 0
    model, tokenizer, config = reference
    expected = generate_text(model, tokenizer, prompts, config)
    assert len(set(expected)) == 3  # distinct answers, so an order mix-up would show
    assert capsys.readouterr().out == "".join(f"{text}\n" for text in expected)


def test_flags_override_the_saved_settings(tiny_checkpoint, reference, tmp_path):
    from dllm.inference.sample import main

    rows = main([str(tiny_checkpoint), "hello", "--gen_length", "4", "--steps", "2", "--output",
                 str(tmp_path / "out.jsonl")])
    model, tokenizer, config = reference
    assert rows[0]["completion"] == generate_text(model, tokenizer, ["hello"], replace(config, gen_length=4,
                                                                                          steps=2))[0]
    assert rows[0]["forward_passes"] == 2  # steps=2, not the saved one-token-per-step over 8


def test_text_file_in_jsonl_out_in_order_across_batches(tiny_checkpoint, reference, tmp_path):
    from dllm.inference.sample import main

    prompts = ["first", "a much longer second prompt", "3", "", "fourth one", "fifth"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "sub" / "answers.jsonl"
    main([str(tiny_checkpoint), "--prompt_file", str(tmp_path / "prompts.txt"), "--output", str(out),
          "--batch_size", "2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    given = [p for p in prompts if p]  # blank lines are skipped
    assert [row["prompt"] for row in rows] == given
    model, tokenizer, config = reference
    assert [row["completion"] for row in rows] == generate_text(model, tokenizer, given, config)
    assert all(row["forward_passes"] == 8 and row["seconds"] > 0 for row in rows)


def test_jsonl_messages_and_prompt_rows(tiny_checkpoint, reference, tmp_path):
    from dllm.inference.sample import main

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]
    lines = [json.dumps({"messages": chat}), "", json.dumps({"prompt": "plain prompt"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    rows = main([str(tiny_checkpoint), "--prompt_file", str(tmp_path / "in.jsonl"), "--output",
                 str(tmp_path / "out.jsonl")])
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == rows
    assert [row["prompt"] for row in rows] == [chat, "plain prompt"]
    assert [row["completion"] for row in rows] == [
        answer_alone(reference, chat), answer_alone(reference, [{"role": "user", "content": "plain prompt"}])]


@pytest.mark.slow
def test_mistakes_are_one_line_and_exit_status_2(tmp_path, tiny_checkpoint, char_tokenizer):
    no_mask, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                               tiny_llama_config(vocab_size=len(char_tokenizer)))
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    (tmp_path / "shape.jsonl").write_text('{"prompt": "ok"}\n\n{"messages": []}\n')
    ckpt = str(tiny_checkpoint)
    cases = {  # one fresh interpreter runs them all: the start-up is paid once, not once per case
        f"{tmp_path / 'missing'}: no such checkpoint folder": [str(tmp_path / "missing"), "hi"],
        f"{no_mask}: no mask token (the tokenizer has none and config.json has no mask_token_id); is it a "
        "masked diffusion checkpoint (dllm sft)?": [str(no_mask), "hi"],
        f"{tmp_path / 'empty.txt'}: no prompts (the file is empty)": [ckpt, "--prompt_file", str(tmp_path / "empty.txt")],
        f"{tmp_path / 'bad.jsonl'}, line 2: not valid JSON (Expecting value)":
            [ckpt, "--prompt_file", str(tmp_path / "bad.jsonl")],
        f'{tmp_path / "shape.jsonl"}, line 3: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}} or '
        '{"prompt": "..."}': [ckpt, "--prompt_file", str(tmp_path / "shape.jsonl")],
        "no prompts: give them as arguments or with --prompt_file": [ckpt],
        "--steps must be at most gen_length (8), got 9": [ckpt, "hi", "--steps", "9"],
    }
    runs = run_dllm_cases({message: ["sample", *argv] for message, argv in cases.items()}, dict(os.environ), ROOT)
    for message, (status, out, err) in runs.items():
        assert (status, err.splitlines(), out) == (2, [f"dllm sample: {message}"], ""), message


def test_help_lists_the_sampler_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sample", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--block_size", "--threshold", "--prompt_file", "--output", "--device"))
