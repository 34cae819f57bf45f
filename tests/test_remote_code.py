"""``--trust_remote_code``: a checkpoint that ships its own Python code (``auto_map``) loads through dllm's loaders
with the flag, and runs that code; without it every loader stops with one line naming the flag.

The text checkpoint is a tiny LLaMA whose ``config.json`` names a new ``model_type`` and a modeling file in the
folder (a LLaMA subclass whose logits are doubled, so its own code is seen running); the vision-language one is a
tiny Qwen3-VL whose ``processor_config.json`` names a processor class in the folder. Offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.cli import main as cli_main
from dllm.core.models import is_bidirectional
from dllm.errors import UsageError
from tests.helpers import save_tiny_masked_lm

MODELING = '''
from transformers import LlamaConfig, LlamaForCausalLM


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote_llama"


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        outputs.logits = outputs.logits * 2  # the checkpoint's own code: LLaMA's logits, doubled
        return outputs
'''

PROCESSING = '''
from transformers import Qwen3VLProcessor


class TinyRemoteProcessor(Qwen3VLProcessor):
    """The checkpoint's own processor class (Qwen3-VL's under another name)."""
'''


def _refusal(path) -> str:
    return (f"{path}: the checkpoint ships its own Python code (auto_map), which dllm does not run unless asked; "
            "review that code, then pass --trust_remote_code True")


def _with_code(path, file_name: str, code: str, config_name: str, **entries):
    """Write ``code`` as ``file_name`` into the checkpoint folder and ``entries`` into its ``config_name``."""
    (path / file_name).write_text(code)
    config = json.loads((path / config_name).read_text())
    config.update(entries)
    (path / config_name).write_text(json.dumps(config))
    return path


@pytest.fixture
def checkpoints(tmp_path):
    """``(plain, remote)``: a tiny LLaMA masked LM (char tokenizer with a mask token, sampler settings) and the
    same weights as a checkpoint with its own code."""
    plain = save_tiny_masked_lm(tmp_path / "plain", gen_length=4)
    remote = _with_code(shutil.copytree(plain, tmp_path / "remote_llama"), "modeling_tiny_remote.py", MODELING,
                        "config.json", model_type="tiny_remote_llama",
                        auto_map={"AutoConfig": "modeling_tiny_remote.TinyRemoteConfig",
                                  "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"})
    return plain, remote


def test_checkpoint_code_runs_as_a_bidirectional_masked_lm_with_trust_remote_code(checkpoints):
    plain_path, remote_path = checkpoints
    model = AutoModelForMaskedDiffusion.from_pretrained(str(remote_path), trust_remote_code=True).eval()
    remote_class = type(model).__mro__[2]  # (the generic subclass, BidirectionalMaskedLMMixin, the remote class)
    assert remote_class.__name__ == "TinyRemoteForCausalLM" and remote_class.__module__.startswith(
        "transformers_modules.")
    assert model.config.model_type == "tiny_remote_llama" and is_bidirectional(model)

    plain = AutoModelForMaskedDiffusion.from_pretrained(str(plain_path)).eval()
    ids = torch.tensor([[5, 9, 14, 20, 27, 33]])  # [1, L]
    changed_last = ids.clone()
    changed_last[0, -1] = 40
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [1, L, V]
        torch.testing.assert_close(logits, 2 * plain(input_ids=ids).logits)  # its own forward ran
        assert not torch.allclose(model(input_ids=changed_last).logits[0, 0], logits[0, 0])  # sees the future
        # the selected-positions path runs the checkpoint's forward too (its head is not plain LLaMA's)
        logits_mask = torch.tensor([[False, True, False, False, True, True]])
        torch.testing.assert_close(model(input_ids=ids, logits_mask=logits_mask).logits, logits[logits_mask])


def test_checkpoint_code_is_refused_in_one_line_without_trust_remote_code(checkpoints, capsys):
    _, remote_path = checkpoints
    with pytest.raises(UsageError) as info:
        AutoModelForMaskedDiffusion.from_pretrained(str(remote_path))
    assert str(info.value) == _refusal(remote_path)

    sample = ["sample", str(remote_path), "Repeat 1", "--steps", "4", "--device", "cpu"]
    assert cli_main(sample) == 2
    captured = capsys.readouterr()
    assert captured.err == f"dllm sample: {_refusal(remote_path)}\n" and captured.out == ""
    assert cli_main([*sample, "--trust_remote_code", "True"]) == 0  # the sampler's loader, trusted
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.fixture
def remote_vl(tmp_path):
    """A tiny Qwen3-VL masked LM whose processor is the checkpoint's own class (``processor_config.json``)."""
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    from tests.helpers import save_tiny_vl

    return _with_code(save_tiny_vl(tmp_path / "remote_vl"), "processing_tiny_remote.py", PROCESSING,
                      "processor_config.json", processor_class="TinyRemoteProcessor",
                      auto_map={"AutoProcessor": "processing_tiny_remote.TinyRemoteProcessor"})


def test_qwen3_vl_recipe_passes_trust_remote_code_to_its_loaders(remote_vl, tmp_path, capsys):
    from tests.helpers import write_vl_rows

    flags = ["sft", "qwen3_vl", "--model_name_or_path", str(remote_vl), "--dataset_args",
             str(write_vl_rows(tmp_path)), "--output_dir", str(tmp_path / "out"), "--lora", "False",
             "--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu", "True", "--report_to", "none",
             "--save_strategy", "no", "--dtype", "float32"]
    assert cli_main(flags) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"dllm sft: {_refusal(remote_vl)}"  # after data progress bars
    assert cli_main([*flags, "--trust_remote_code", "True"]) == 0
    assert json.loads((tmp_path / "out" / "processor_config.json").read_text())["processor_class"] == (
        "TinyRemoteProcessor")


def test_demo_vl_evaluation_passes_trust_remote_code_to_its_loaders(remote_vl):
    from types import SimpleNamespace

    from dllm.demo.vl import VLDemoArguments, evaluate, recipe_options

    no_rows = SimpleNamespace(heldout=[])  # loading is what is tested; nothing to answer
    with pytest.raises(UsageError) as info:
        evaluate(VLDemoArguments(), no_rows, remote_vl, remote_vl)
    assert str(info.value) == _refusal(remote_vl)
    assert evaluate(VLDemoArguments(trust_remote_code=True), no_rows, remote_vl, remote_vl) == []
    model_args = recipe_options(VLDemoArguments(trust_remote_code=True), remote_vl, remote_vl, remote_vl, [])[0]
    assert model_args.trust_remote_code is True  # and training gets the flag too
