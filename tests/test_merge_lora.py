"""``dllm merge-lora``: the adapter the SFT recipe saves, merged into its base, gives the adapter model's logits."""

from __future__ import annotations

import logging
import re
from pathlib import Path
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
from dllm.sft.recipe import run as sft_main
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
    assert not {"processor_config.json", "preprocessor_config.json"} & {p.name for p in merged_dir.iterdir()}

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


@pytest.fixture(scope="module")
def trained_vl(tmp_path_factory):
    """A tiny Qwen3-VL whose tokenizer has no mask token, fine-tuned 4 steps with LoRA by ``dllm sft qwen3_vl``
    (in-process), which saves the adapter with the processor (image processor, chat template, tokenizer)."""
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl
    from tests.helpers import write_vl_rows

    tmp_path = tmp_path_factory.mktemp("lora_vl")
    model, processor = build_tiny_qwen3_vl()
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    assert cli_main(["sft", "qwen3_vl", "--model_name_or_path", str(tmp_path / "base"), "--dataset_args",
                     str(write_vl_rows(tmp_path)), "--output_dir", str(out), "--lora", "True", "--r", "4",
                     "--max_steps", "4", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
                     "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--dtype", "float32"]) == 0
    assert (out / "adapter" / "processor_config.json").is_file()
    return SimpleNamespace(base=tmp_path / "base", adapter=out / "adapter", tmp=tmp_path)


def _vl_logits(model, processor) -> torch.Tensor:
    """Logits [B, L, V] on two image questions whose answers are masked (the collator's batch)."""
    from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator
    from tests.helpers import vl_rows

    batch = create_qwen3_vl_collator(processor)(vl_rows(2))
    labels = batch.pop("labels")
    batch["input_ids"] = batch["input_ids"].masked_fill(labels != -100, processor.tokenizer.mask_token_id)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize("processor_from", ["adapter", "base"])
def test_merged_vl_checkpoint_has_the_processor_and_matches_the_adapter_model(trained_vl, processor_from, capsys):
    """The merged Qwen3-VL folder loads with AutoProcessor (its tokenizer the adapter's, mask token included,
    also when the processor comes from BASE because the adapter folder holds only the tokenizer), gives the
    adapter model's logits on an image batch, and answers an image question with dllm sample --image."""
    import shutil

    from transformers import AutoProcessor, Qwen3VLProcessor

    adapter = trained_vl.adapter
    if processor_from == "base":  # an adapter folder without the processor's files: BASE's is used
        adapter = trained_vl.tmp / "adapter_without_processor"
        shutil.copytree(trained_vl.adapter, adapter, ignore=shutil.ignore_patterns("processor_config.json"))
    merged_dir = trained_vl.tmp / f"merged_{processor_from}"
    assert cli_main(["merge-lora", str(trained_vl.base), str(adapter), str(merged_dir)]) == 0

    processor = AutoProcessor.from_pretrained(merged_dir)
    merged = AutoModelForMaskedDiffusion.from_pretrained(str(merged_dir))
    assert isinstance(processor, Qwen3VLProcessor) and processor.chat_template is not None
    assert AutoTokenizer.from_pretrained(trained_vl.base).mask_token_id is None  # BASE's tokenizer has none
    mask_id = AutoTokenizer.from_pretrained(trained_vl.adapter).mask_token_id
    assert processor.tokenizer.mask_token_id == mask_id == merged.config.text_config.mask_token_id is not None

    adapter_model, _ = _adapter_model(SimpleNamespace(base=trained_vl.base, adapter=trained_vl.adapter))
    expected = _vl_logits(adapter_model, processor)
    torch.testing.assert_close(_vl_logits(merged, processor), expected, atol=1e-5, rtol=0)
    with adapter_model.disable_adapter():  # the adapter mattered
        assert (_vl_logits(adapter_model, processor) - expected).abs().max() > 1e-3

    status = cli_main(["sample", str(merged_dir), "What is in the picture?", "--image",
                       str(trained_vl.tmp / "img" / "0.png"), "--gen_length", "4", "--steps", "4", "--device", "cpu"])
    assert status == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


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


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_sharded_lora_save_writes_only_the_adapter_and_logs_the_merge_command(tmp_path, caplog, backend):
    """Under DeepSpeed or FSDP (a stand-in trainer: no GPU, no accelerator, no tokenizer to save) save_final
    writes the adapter alone, merges nothing, and logs the dllm merge-lora command that merges it."""
    out = tmp_path / "out"

    def save_model(folder):  # what Trainer.save_model writes under LoRA
        Path(folder).mkdir(parents=True)
        (Path(folder) / "adapter_config.json").write_text("{}")

    trainer = SimpleNamespace(save_model=save_model, is_deepspeed_enabled=backend == "deepspeed",
                              is_fsdp_enabled=backend == "fsdp")
    with caplog.at_level(logging.WARNING, logger="dllm.sft.recipe"):
        save_final(trainer, tokenizer=None, output_dir=str(out), lora=True, base="org/base")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["adapter", "adapter/adapter_config.json"]
    assert caplog.messages == [
        f"LoRA under DeepSpeed/FSDP: only the adapter was saved to {out}/adapter; merge it into the base "
        f"model on one process with: dllm merge-lora org/base {out}/adapter {out} --overwrite True"]


# ---- a BASE the adapter does not fit, and an OUT that is the model being read ---------------------------------
def _other_base(tmp_path, **overrides):
    """A base like ``trained``'s (same tokenizer) but with other ``overrides`` of its config."""
    from dllm.demo.tokenizer import build_char_tokenizer

    char_tokenizer = build_char_tokenizer()
    tmp_path.mkdir(parents=True, exist_ok=True)
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1, **overrides))
    return base


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"num_hidden_layers": 3}, "4 of BASE's LoRA layers have no adapter weights (first: "
                               "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight)"),
    ({"num_hidden_layers": 1}, "4 adapter weights have no layer in BASE (first: "
                               "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight)"),
])
def test_an_adapter_that_does_not_fit_base_is_refused(trained, tmp_path, overrides, problem):
    """peft only warns when the adapter's layers and BASE's do not pair up; merging would write a model that
    silently lacks part of the training. Refused in one line, nothing written."""
    base = _other_base(tmp_path / "other", **overrides)
    with pytest.raises(UsageError) as info:
        merge_lora(str(base), trained.adapter, tmp_path / "merged")
    assert str(info.value) == (f"{trained.adapter}: does not fit BASE {base}: {problem}; merge it into the base it "
                               "was trained from")
    assert not (tmp_path / "merged").exists()


def test_an_adapter_with_other_shapes_is_refused(trained, tmp_path):
    base = _other_base(tmp_path / "other", hidden_size=64, intermediate_size=64)
    with pytest.raises(UsageError, match=re.escape(f"{trained.adapter}: does not fit BASE {base} (Error(s) in "
                                                   "loading state_dict")) as info:
        merge_lora(str(base), trained.adapter, tmp_path / "merged")
    assert "size mismatch" in str(info.value) and "\n" not in str(info.value)


def test_a_base_other_than_the_adapters_is_said(trained, tmp_path, caplog):
    """A copy of the adapter's base at another path merges (it fits), with one line saying it is not the one the
    adapter names."""
    import shutil

    copy = tmp_path / "copy_of_base"
    shutil.copytree(trained.base, copy)
    with caplog.at_level(logging.WARNING, logger="dllm.sft.merge"):
        merge_lora(str(copy), trained.adapter, tmp_path / "merged")
    assert caplog.messages == [f"{trained.adapter} was trained from {trained.base} (its base_model_name_or_path); "
                               f"merging it into {copy} instead"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dllm.sft.merge"):
        merge_lora(str(trained.base), trained.adapter, tmp_path / "merged_again")
    assert caplog.messages == []


@pytest.mark.parametrize("case", ["out is base", "out holds base", "out is adapter", "unwritable out"])
def test_an_out_that_is_the_model_being_read_is_refused_even_with_overwrite(trained, tmp_path, case):
    base, adapter = str(trained.base), trained.adapter
    out, expected = {
        "out is base": (trained.base, f"{trained.base}: is the model being read ({trained.base}); saving there would "
                                      "overwrite it (refused even with overwrite); choose another folder"),
        "out holds base": (trained.tmp, f"{trained.tmp}: holds the model being read ({trained.base}), which saving "
                                        "or checkpoint rotation could overwrite or delete; choose a folder outside it"),
        "out is adapter": (adapter, f"{adapter}: is ADAPTER, the model being read; write the merged model to another "
                                    "folder"),
        "unwritable out": (Path("/proc/x"), "/proc/x: cannot write in /proc (No such file or directory)"),
    }[case]
    before = {p: p.stat().st_mtime_ns for p in trained.tmp.rglob("*")}
    with pytest.raises(UsageError) as info:
        merge_lora(base, adapter, out, overwrite=True)
    assert str(info.value) == expected
    assert {p: p.stat().st_mtime_ns for p in trained.tmp.rglob("*")} == before  # nothing was written
