"""``dllm merge-lora``: the adapter the SFT recipe saves, merged into its base, gives the adapter model's logits."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.cli import main as cli_main
from dllm.core.models import is_bidirectional
from dllm.core.models.masked_lm import add_mask_token
from dllm.errors import UsageError
from dllm.sft.merge import merge_lora
from dllm.sft.recipe import main as sft_main
from dllm.sft.recipe import save_final
from tests.helpers import alpaca_fixture, checkpoint_without_mask_token, tiny_llama_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LLaMA without a mask token, fine-tuned 4 steps with LoRA by the SFT recipe (in-process)."""
    from dllm.demo.tokenizer import build_char_tokenizer

    tmp_path = tmp_path_factory.mktemp("lora")
    char_tokenizer = build_char_tokenizer()
    base, vocab = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                                tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    out = tmp_path / "out"
    sft_main(None, ["--model_name_or_path", str(base), "--dataset_args", f"{alpaca_fixture(tmp_path / 'a.json')}",
                    "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
                    "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--learning_rate", "1e-2",
                    "--max_seq_length", "64", "--lora", "True", "--r", "4", "--lora_alpha", "8",
                    "--target_modules", "q_proj", "v_proj", "--dtype", "float32"])
    return SimpleNamespace(base=base, vocab=vocab, out=out, adapter=out / "adapter", tmp=tmp_path)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def _adapter_model(trained):
    """BASE + the saved adapter, unmerged: what the adapter computes."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(trained.adapter)
    model = AutoModelForMaskedDiffusion.from_pretrained(str(trained.base), dtype=torch.float32)
    add_mask_token(model, tokenizer)
    return PeftModel.from_pretrained(model, str(trained.adapter)), tokenizer


def test_merged_checkpoint_matches_the_adapter_model(trained):
    merged_dir = trained.tmp / "merged"
    assert cli_main(["merge-lora", str(trained.base), str(trained.adapter), str(merged_dir)]) == 0

    merged = AutoModelForMaskedDiffusion.from_pretrained(str(merged_dir))
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.mask_token_id is not None and merged.config.mask_token_id == tokenizer.mask_token_id
    assert merged.get_input_embeddings().weight.shape[0] == trained.vocab + 1  # the base had no mask row
    assert is_bidirectional(merged)

    ids = torch.tensor([tokenizer("Repeat 3 twice")["input_ids"] + [tokenizer.mask_token_id] * 4])  # [1, L]
    adapter_model, _ = _adapter_model(trained)
    expected = _logits(adapter_model, ids)
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=0)
    # the recipe's own merge (in memory, from the trained model) agrees too
    recipe_merged = AutoModelForMaskedDiffusion.from_pretrained(str(trained.out))
    torch.testing.assert_close(_logits(recipe_merged, ids), expected, atol=1e-5, rtol=0)
    # and the adapter mattered: without it the logits differ
    with adapter_model.disable_adapter():
        assert (_logits(adapter_model, ids) - expected).abs().max() > 1e-3


def test_merged_checkpoint_samples(trained, capsys):
    merged_dir = trained.tmp / "merged_for_sampling"
    merge_lora(str(trained.base), trained.adapter, merged_dir)
    status = cli_main(["sample", str(merged_dir), "Repeat 1", "--gen_length", "8", "--steps", "4", "--device", "cpu"])
    assert status == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_merging_beside_the_adapter_needs_overwrite(trained):
    """The recipe's DeepSpeed/FSDP message merges into OUT, which already holds the adapter (and here the
    recipe's own merge): refused without --overwrite, done with it."""
    with pytest.raises(UsageError, match=re.escape(f"{trained.out}: exists and is not empty; choose a new folder "
                                                   "or pass --overwrite True (files of the same names are replaced)")):
        merge_lora(str(trained.base), trained.adapter, trained.out)
    merge_lora(str(trained.base), trained.adapter, trained.out, overwrite=True)
    assert (trained.adapter / "adapter_config.json").is_file()  # nothing deleted


def test_an_adapter_folder_alone_is_not_refused_as_non_empty(trained, tmp_path):
    """OUT holding only ADAPTER itself counts as empty (dllm merge-lora BASE OUT/adapter OUT)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained.adapter, out / "adapter")
    merge_lora(str(trained.base), out / "adapter", out)
    assert (out / "config.json").is_file()


@pytest.mark.parametrize(("case", "message"), [
    ("missing base", "{tmp}/nope: no such checkpoint folder"),
    ("missing adapter", "{tmp}/nope: no such adapter folder"),
    ("not an adapter", "{tmp}/empty: not a peft adapter folder (no adapter_config.json); give the adapter folder "
                       "dllm sft --lora True saves, OUT/adapter"),
    ("out is a file", "{tmp}/file.txt: exists and is not a folder"),
])
def test_merge_errors_name_the_path(trained, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    base, adapter, out = str(trained.base), str(trained.adapter), str(tmp_path / "new")
    if case == "missing base":
        base = str(tmp_path / "nope")
    elif case == "missing adapter":
        adapter = str(tmp_path / "nope")
    elif case == "not an adapter":
        adapter = str(tmp_path / "empty")
    else:
        out = str(tmp_path / "file.txt")
    with pytest.raises(UsageError) as info:
        merge_lora(base, adapter, out)
    assert str(info.value) == message.format(tmp=tmp_path)
    assert not (tmp_path / "new").exists()


def test_deepspeed_lora_save_prints_the_merge_command(tmp_path, caplog):
    saved = []
    trainer = SimpleNamespace(save_model=saved.append, is_deepspeed_enabled=True, is_fsdp_enabled=False)
    with caplog.at_level(logging.WARNING, logger="dllm.sft.recipe"):
        save_final(trainer, tokenizer=None, output_dir=str(tmp_path / "out"), lora=True, base="org/base")
    assert saved == [str(tmp_path / "out" / "adapter")]
    assert caplog.messages == [
        f"LoRA under DeepSpeed/FSDP: only the adapter was saved to {tmp_path}/out/adapter; merge it into the base "
        f"model on one process with: dllm merge-lora org/base {tmp_path}/out/adapter {tmp_path}/out --overwrite True"]
