"""``dllm.sft.checkpoints``: which checkpoint a run resumes from, and which output folders it refuses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dllm.errors import UsageError
from dllm.sft.checkpoints import (
    check_output_dir,
    check_writable,
    checkpoint_problem,
    latest_complete_checkpoint,
    resolve_resume_checkpoint,
)


def _checkpoint(folder: Path, *, state: bool = True) -> Path:
    """What Trainer writes: weights, then trainer_state.json last (left out: a run killed while saving)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    return folder


@pytest.fixture
def run(tmp_path):
    """An output folder with complete checkpoint-2 and checkpoint-10, and checkpoint-12 killed while saving."""
    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-2")
    _checkpoint(out / "checkpoint-10")  # numeric order: 10 after 2
    _checkpoint(out / "checkpoint-12", state=False)
    return out


def test_true_resumes_the_latest_checkpoint(run):
    (run / "checkpoint-12" / "trainer_state.json").write_text("{}")
    assert resolve_resume_checkpoint("True", str(run)) == str(run / "checkpoint-12")
    assert resolve_resume_checkpoint(True, str(run)) == str(run / "checkpoint-12")
    for value in (None, False, "False", ""):
        assert resolve_resume_checkpoint(value, str(run)) is None


def test_an_incomplete_latest_checkpoint_names_the_complete_one(run):
    with pytest.raises(UsageError) as info:
        resolve_resume_checkpoint("True", str(run))
    assert str(info.value) == (f"--resume_from_checkpoint True: the latest checkpoint {run}/checkpoint-12 is "
                               "incomplete (no trainer_state.json, which Trainer writes last: the run was stopped "
                               f"while saving it); the latest complete one is {run}/checkpoint-10: pass "
                               f"--resume_from_checkpoint {run}/checkpoint-10")


def test_a_truncated_weights_file_makes_a_checkpoint_incomplete(run):
    weights = run / "checkpoint-10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert checkpoint_problem(run / "checkpoint-10") == ("model.safetensors is corrupt or truncated (Error while "
                                                         "deserializing header: incomplete metadata, file not fully "
                                                         "covered)")
    assert latest_complete_checkpoint(run) == run / "checkpoint-2"
    with pytest.raises(UsageError) as info:
        resolve_resume_checkpoint(str(run / "checkpoint-10"), str(run))
    assert str(info.value).startswith(f"--resume_from_checkpoint {run}/checkpoint-10: incomplete checkpoint "
                                      "(model.safetensors is corrupt or truncated")
    assert str(info.value).endswith(f"the latest complete one is {run}/checkpoint-2: pass --resume_from_checkpoint "
                                    f"{run}/checkpoint-2")


def test_a_missing_checkpoint_path(run, tmp_path):
    with pytest.raises(UsageError) as info:
        resolve_resume_checkpoint(str(run / "checkpoint-99"), str(tmp_path / "elsewhere"))
    assert str(info.value) == (f"--resume_from_checkpoint {run}/checkpoint-99: no such checkpoint folder; the "
                               f"latest complete one is {run}/checkpoint-10: pass --resume_from_checkpoint "
                               f"{run}/checkpoint-10")
    with pytest.raises(UsageError) as info:
        resolve_resume_checkpoint(str(tmp_path / "nope"), str(tmp_path / "new"))
    assert str(info.value) == (f"--resume_from_checkpoint {tmp_path}/nope: no such checkpoint folder; no complete "
                               f"checkpoint-N in {tmp_path} or {tmp_path}/new; start without --resume_from_checkpoint")
    with pytest.raises(UsageError) as info:
        resolve_resume_checkpoint("True", str(tmp_path / "new"))
    assert str(info.value) == (f"--resume_from_checkpoint True: no checkpoint-N folder in --output_dir {tmp_path}/new "
                               "to resume from; give a checkpoint folder, or start without the flag")


def test_a_checkpoint_the_trainer_wrote_is_complete_until_truncated(tmp_path):
    """The real Trainer's checkpoints: complete as written; truncating the last one's weights (a kill while
    saving) makes True refuse it and name the one before."""
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    from tests.helpers import tiny_llama_config

    torch.manual_seed(0)
    rows = [{"input_ids": torch.arange(8), "labels": torch.arange(8)} for _ in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=1, per_device_train_batch_size=2,
                             use_cpu=True, report_to="none", save_strategy="steps")
    Trainer(model=LlamaForCausalLM(tiny_llama_config()), args=args, train_dataset=rows).train()
    assert resolve_resume_checkpoint("True", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UsageError, match=f"the latest complete one is {tmp_path}/checkpoint-1: pass"):
        resolve_resume_checkpoint("True", str(tmp_path))


@pytest.mark.parametrize("relation", ["is", "holds"])
def test_an_output_dir_that_is_or_holds_the_model_is_refused(tmp_path, relation):
    model = tmp_path / "run" / "checkpoint-4"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    out = model if relation == "is" else tmp_path / "run"
    with pytest.raises(UsageError) as info:
        check_output_dir(str(out), ["org/hub-model", str(model)])
    expected = {"is": f"--output_dir {out}: is the model being read ({model}); saving there would overwrite it "
                      "(refused even with overwrite); choose another folder",
                "holds": f"--output_dir {out}: holds the model being read ({model}), which saving or checkpoint "
                         "rotation could overwrite or delete; choose a folder outside it"}
    assert str(info.value) == expected[relation]
    check_output_dir(str(model / "sft"), [str(model)])  # a folder inside the model's overwrites nothing of it
    check_output_dir(str(tmp_path / "new"), ["org/hub-model", str(model)])
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize(("folder", "expected"), [
    ("/proc/x", "--output_dir /proc/x: cannot write in /proc (No such file or directory)"),
    ("{tmp}/file/sub", "--output_dir {tmp}/file/sub: {tmp}/file is a file, not a folder"),
    ("{tmp}/file", "--output_dir {tmp}/file: exists and is not a folder"),
])
def test_an_unwritable_output_dir_is_refused_first(tmp_path, folder, expected):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError) as info:
        check_writable(folder.format(tmp=tmp_path))
    assert str(info.value) == expected.format(tmp=tmp_path)


def test_another_runs_checkpoints_are_warned_about_unless_resuming(run, caplog):
    with caplog.at_level(logging.WARNING, logger="dllm.sft.checkpoints"):
        check_output_dir(str(run), [])
        check_output_dir(str(run), [], resume_from_checkpoint=str(run / "checkpoint-10"))
    assert caplog.messages == [
        f"{run} already holds 3 checkpoints of another run (checkpoint-2, checkpoint-10, checkpoint-12); this run's "
        "checkpoints of the same steps will replace them: pass --resume_from_checkpoint True to continue that run, "
        "or choose an empty --output_dir"]
