"""``dllm pt``: pretraining on raw text through the one recipe, end to end on a tiny LLaMA base model (no chat
template, no mask token), the checkpoint sampled by ``dllm sample``; document packing's attention; block diffusion,
LoRA, streaming; one-line mistakes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from datasets import Dataset

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.cli import main as cli
from dllm.data.collator import SFTDataCollator
from dllm.data.text import make_rows
from dllm.options import RUN_CONFIG_NAME
from dllm.sft.config import PTDataArguments
from dllm.sft.recipe import parse_args, run

FLAGS = ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--use_cpu", "True",
         "--report_to", "none", "--learning_rate", "1e-3", "--max_seq_length", "32", "--logging_steps", "1",
         "--save_strategy", "no", "--dtype", "float32"]
WORDS = "the of and a to in is was for on that with as by at from his her an were are which this be".split()


def _base_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from dllm.demo.tokenizer import build_char_tokenizer

    char = build_char_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=char.backend_tokenizer, bos_token="<|bos|>",
                                   eos_token="<|eos|>", pad_token="<|pad|>")


def _tiny_llama(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A pretrained-style causal checkpoint: a tokenizer without chat template or mask token, and a text corpus."""
    from transformers import LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("pt")
    tokenizer = _base_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny_llama(len(tokenizer))).save_pretrained(tmp / "base")
    tokenizer.save_pretrained(tmp / "base")
    generator = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(n),), generator=generator))
            for n in torch.randint(2, 30, (40,), generator=generator)]
    (tmp / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return tmp / "base", tmp / "corpus.jsonl"


def test_pt_trains_evaluates_the_elbo_and_the_checkpoint_samples_raw_text(base, tmp_path, capsys):
    checkpoint, corpus = base
    out = tmp_path / "run"
    trainer = run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", f"{corpus}[test:4]",
                         "--output_dir", str(out), "--max_steps", "4", "--eval_steps", "4", *FLAGS], mode="pt")
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evals and evals[-1]["eval_perplexity_bound"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    model = AutoModelForMaskedDiffusion.from_pretrained(str(out))
    assert model.config.mask_token_id is not None and not model.config.is_causal
    saved = yaml.safe_load((out / RUN_CONFIG_NAME).read_text())
    assert saved["packing"] == "document" and saved["objective"] == "mdlm" and "mask_prompt_loss" not in saved
    _, data_args, training_args = parse_args(["--config", str(out / RUN_CONFIG_NAME)], mode="pt")
    assert isinstance(data_args, PTDataArguments) and training_args.max_steps == 4
    capsys.readouterr()
    assert cli(["sample", str(out), "the cat", "a dog was", "--gen_length", "8", "--steps", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # one continuation per prompt, no chat template needed
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                                              {"role": "user", "content": "and?"}]}) + "\n")
    assert cli(["sample", str(out), "--prompt_file", str(chats)]) == 2
    assert "prompt 1: a conversation, and the checkpoint's tokenizer has no chat template" in capsys.readouterr().err


def test_pt_block_diffusion_with_lora_concat_and_variable_length_rows(base, tmp_path, capsys):
    checkpoint, corpus = base
    out = tmp_path / "bd3lm"
    trainer = run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", str(corpus), "--output_dir",
                         str(out), "--max_steps", "3", "--objective", "bd3lm", "--block_size", "4", "--lora", "True",
                         "--packing", "concat", "--variable_length_fraction", "0.5", *FLAGS], mode="pt")
    assert trainer.state.global_step == 3 and (out / "adapter").is_dir()
    config = json.loads((out / "config.json").read_text())
    assert config["dllm_objective"] == "bd3lm" and config["dllm_block_size"] == 4
    generation = json.loads((out / "diffusion_generation_config.json").read_text())
    assert generation["cache"] == "block" and generation["block_size"] == 4
    capsys.readouterr()
    assert cli(["sample", str(out), "the", "--gen_length", "8"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_streaming_needs_max_steps_and_trains_with_it(base, tmp_path, capsys):
    checkpoint, corpus = base
    argv = ["pt", "--model_name_or_path", str(checkpoint), "--dataset_args", str(corpus), "--streaming", "True",
            "--output_dir", str(tmp_path / "s"), *FLAGS]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--streaming True needs --max_steps" in err
    trainer = run(None, argv[1:] + ["--max_steps", "2"], mode="pt")
    assert trainer.state.global_step == 2 and (tmp_path / "s" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--text_column", "body"], r"corpus.jsonl: no 'body' column \(found \['text'\]\)"),
    (["--variable_length_fraction", "2"], "variable_length_fraction must be in"),
    (["--packing", "pairs"], "invalid choice: 'pairs'"),
])
def test_mistakes_are_one_line(base, tmp_path, capsys, argv, message):
    import re

    checkpoint, corpus = base
    assert cli(["pt", "--model_name_or_path", str(checkpoint), "--dataset_args", str(corpus), "--output_dir",
                str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, L, V]


@pytest.mark.parametrize("packing", ["document", "concat"])
def test_a_document_sees_its_neighbours_only_under_concat(packing):
    torch.manual_seed(0)
    model = AutoModelForMaskedDiffusion.from_config(_tiny_llama(32)).eval()
    collate = SFTDataCollator(_base_tokenizer(), max_seq_length=24)
    first, second = [5, 6, 7, 8, 9, 2], [10, 11, 12, 13, 14, 15, 16, 2]
    alone = _logits(model, collate(list(make_rows(Dataset.from_dict({"input_ids": [first]}), 24))))[0]  # [6, V]
    batch = collate(list(make_rows(Dataset.from_dict({"input_ids": [first, second]}), 24, packing=packing)))
    assert batch["input_ids"].shape == (1, 14) and (batch["labels"] == batch["input_ids"]).all()
    together = _logits(model, batch)[0]  # [14, V]
    # Best-fit decreasing puts the longer document first: find where the first one starts.
    start = batch["input_ids"][0].tolist().index(5)
    inside = together[start:start + len(first)]
    if packing == "document":
        torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)
    else:
        assert (inside - alone).abs().max() > 1e-3


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(base, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from dllm.core.trainers.mdlm_trainer import MDLMTrainer

    checkpoint, corpus = base
    common = ["--model_name_or_path", str(checkpoint), "--dataset_args", str(corpus), "--max_steps", "4", *FLAGS,
              "--save_strategy", "steps", "--save_steps", "2"]
    run(None, [*common, "--output_dir", str(tmp_path / "whole")], mode="pt")
    steps, step = [], MDLMTrainer.training_step
    monkeypatch.setattr(MDLMTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    run(None, [*common, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint",
               str(tmp_path / "whole" / "checkpoint-2")], mode="pt")
    assert len(steps) == 2  # steps 3 and 4 only: the first two come from the checkpoint
    whole, again = (load_file(tmp_path / run_dir / "model.safetensors") for run_dir in ("whole", "resumed"))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)


def test_the_example_scripts_are_thin_and_print_one_line_for_a_mistake(tmp_path):
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for family in ("llama3", "gemma2"):
        tree = ast.parse((root / "examples" / family / "pt.py").read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], family
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, str(root / "examples/llama3/pt.py"), "--model_name_or_path",
                             str(tmp_path / "nope")], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == f"dllm pt: {tmp_path / 'nope'}: no such checkpoint folder"
