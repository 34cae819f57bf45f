"""Bad inputs get one clear error naming the input and what was expected: data loaders, the collator, the
trainer's options, checkpoints and models, and the command line (one stderr line, exit status 2, no traceback).

Every case compares the whole message. The library raises :class:`~dllm.errors.UsageError` (a ``ValueError``)
or a subclass of it for each, which is what lets ``dllm`` print it as one line without catching real bugs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from dllm.core.schedules import SCHEDULES
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.data import ChatTemplateError, DataValidationError, SFTDataCollator, load_sft_dataset
from dllm.errors import UsageError
from dllm.inference.loading import CheckpointArguments, load_checkpoint
from dllm.sft.config import ModelArguments
from dllm.sft.recipe import apply_lora, build_model_and_tokenizer, parse_args
from tests.helpers import alpaca_fixture, checkpoint_without_mask_token, run_dllm_cases, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
JSON_SHAPE = "expected a JSON array of rows or JSON lines (one object per line)"


def _messages(*turns: tuple) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD = _messages(("user", "hi"), ("assistant", "hello"))


def _jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# ---- data files: (file name, content, spec suffix, expected message with {path}) ----------------------------
DATA_CASES = {
    "missing messages": ("chat.jsonl", _jsonl(GOOD, {"messages": None}), "",
                         "{path} row 1: 'messages' is missing"),
    "empty messages": ("chat.jsonl", _jsonl(GOOD, {"messages": []}), "", "{path} row 1: 'messages' is empty"),
    "unknown role": ("chat.jsonl", _jsonl(_messages(("bot", "hi"), ("assistant", "x"))), "",
                     "{path} row 0: messages[0].role must be one of system, user, assistant, got 'bot'"),
    "non-string content": ("chat.jsonl", _jsonl(GOOD, _messages(("user", "hi"), ("assistant", 5))), "",
                           "{path} row 1: messages[1].content must be a string, got int"),
    "no assistant turn": ("chat.jsonl", _jsonl(GOOD, _messages(("system", "be brief"), ("user", "hi"))), "",
                          "{path} row 1: no assistant turn (roles: system, user)"),
    "empty content": ("chat.jsonl", _jsonl(_messages(("user", "  "), ("assistant", "x"))), "",
                      "{path} row 0: messages[0].content is empty"),
    "alpaca row without output": ("a.json", json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]),
                                  "", "{path} row 1: 'output' is missing"),
    "unknown columns": ("qa.jsonl", _jsonl({"question": "q", "answer": "a"}), "",
                        "{path}: unknown data format, found keys ['question', 'answer']; expected 'messages' "
                        "(OpenAI chat format) or 'instruction' and 'output' (Alpaca)"),
    "empty file": ("empty.jsonl", "", "", "{path}: no rows (empty file)"),
    "one object instead of rows": ("one.json", json.dumps({"instruction": "x", "output": "y"}), "",
                                   f"{{path}}: one JSON object instead of rows; {JSON_SHAPE} "
                                   "(name a one-row file .jsonl)"),
    "invalid JSON line": ("bad.jsonl", _jsonl(GOOD) + "{not json}\n", "",
                          f"{{path}}: invalid JSON at line 2: Expecting property name enclosed in double quotes; "
                          f"{JSON_SHAPE}"),
    "non-UTF-8 file": ("latin1.jsonl", '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"), "",
                       "{path}: not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 20: invalid "
                       "continuation byte)"),
    "unsupported file type": ("data.csv", "a,b\n", "", "{path}: unsupported file type '.csv'; expected one of "
                              "('.json', '.jsonl', '.parquet')"),
    "train count larger than the data": ("a.json", None, "[train:30]",
                                         "{path} train: asked for 30 rows but only 24 are available"),
    "test count larger than the data": ("a.json", None, "[test:24]",
                                        "{path} test: asked for 24 held-out rows but the source has only 24 rows"),
    "train and test counts together larger": ("a.json", None, "[train:20,test:5]",
                                              "{path} train: asked for 20 rows but only 19 are available"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(tmp_path, case):
    name, content, suffix, expected = DATA_CASES[case]
    path = tmp_path / name
    if content is None:
        alpaca_fixture(path)  # 24 rows
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(UsageError) as info:
        load_sft_dataset(f"{path}{suffix}")
    assert str(info.value) == expected.format(path=path)


@pytest.mark.parametrize(("spec", "expected"), [
    ("data.json[train:abc]", "bad spec 'data.json[train:abc]': train count must be a positive integer, got 'abc'"),
    ("data.json[val:3]", "bad spec 'data.json[val:3]': unknown key 'val'; expected 'train' or 'test'"),
    ("data.json[train:0]", "bad spec 'data.json[train:0]': train count must be a positive integer, got '0'"),
    ("a.json+", "bad spec 'a.json+': empty source around '+'"),
    ("data.json[train:3", "bad spec 'data.json[train:3': expected name_or_path[train:N,test:M] with the bracket "
                          "part optional"),
])
def test_bad_dataset_spec(spec, expected):
    with pytest.raises(UsageError) as info:
        load_sft_dataset(spec)
    assert str(info.value) == expected


def test_missing_data_file_is_a_file_not_found_usage_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_sft_dataset(str(tmp_path / "nope.json"))
    assert isinstance(info.value, UsageError) and str(info.value) == f"dataset file not found: {tmp_path}/nope.json"


def test_unknown_hub_dataset_fails_fast_offline(monkeypatch):
    """Offline, ``datasets`` raises ConnectionError at once (no retry loop); the error names the id."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    began = time.perf_counter()
    with pytest.raises(UsageError) as info:
        load_sft_dataset("nonexistent/xyz[train:5]")
    assert time.perf_counter() - began < 10
    assert str(info.value) == ("nonexistent/xyz: not a local file or folder, and not a loadable Hugging Face Hub "
                               "dataset (Couldn't reach 'nonexistent/xyz' on the Hub (OfflineModeIsEnabled))")


def test_row_errors_stay_data_validation_errors(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(_jsonl(_messages(("bot", "hi"), ("assistant", "x"))))
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(path))
    assert (info.value.index, info.value.problem) == (0, "unknown role")


# ---- the collator ---------------------------------------------------------------------------------------------
def test_prompt_longer_than_max_seq_length_in_every_row_raises(char_tokenizer):
    collator = SFTDataCollator(char_tokenizer, max_seq_length=8)
    with pytest.raises(UsageError) as info:
        collator([_messages(("user", "a long prompt that fills the canvas"), ("assistant", "ok"))])
    assert str(info.value) == ("all 1 rows of the batch have no answer token within max_seq_length=8; raise "
                               "max_seq_length or filter long prompts")


def test_a_dropped_row_is_counted_and_logged(char_tokenizer, caplog):
    collator = SFTDataCollator(char_tokenizer, max_seq_length=16)
    rows = [_messages(("user", "x" * 40), ("assistant", "ok")), _messages(("user", "hi"), ("assistant", "ok"))]
    with caplog.at_level(logging.WARNING, logger="dllm.data.collator"):
        batch = collator(rows)
    assert batch["input_ids"].shape[0] == 1 and collator.num_dropped == 1
    assert caplog.messages == ["dropped 1 of 2 rows with no answer token within max_seq_length=16 (1 dropped so far)"]


@pytest.mark.parametrize(("options", "expected"), [
    ({"max_seq_length": 0}, "max_seq_length must be a positive integer or None, got 0"),
    ({"max_seq_length": -5}, "max_seq_length must be a positive integer or None, got -5"),
    ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be a positive integer or None, got 0"),
])
def test_bad_collator_options(char_tokenizer, options, expected):
    with pytest.raises(UsageError) as info:
        SFTDataCollator(char_tokenizer, **options)
    assert str(info.value) == expected


def test_collating_messages_without_a_chat_template(char_tokenizer):
    char_tokenizer.chat_template = None
    char_tokenizer.name_or_path = "plain-tokenizer"
    with pytest.raises(ChatTemplateError) as info:
        SFTDataCollator(char_tokenizer)([GOOD])
    assert str(info.value) == ("plain-tokenizer: the tokenizer has no chat template to render conversations with; "
                               "use a chat checkpoint or set chat_template")


# ---- trainer options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({"schedule": "cosinus"}, f"unknown masking schedule 'cosinus'; choose one of {', '.join(SCHEDULES)}"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be a positive integer, got 0"),
    ({"per_device_train_batch_size": -2}, "per_device_train_batch_size must be a positive integer, got -2"),
    ({"per_device_eval_batch_size": 0}, "per_device_eval_batch_size must be a positive integer, got 0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive integer, got 0"),
    ({"time_eps": 1.5}, "time_eps must be in [0, 1], got 1.5"),
    ({"time_eps": -0.1}, "time_eps must be in [0, 1], got -0.1"),
    ({"loss_weighting": "elbow"}, "loss_weighting must be one of elbo, uniform, got 'elbow'"),
    ({"time_sampler": "sobol"}, "time_sampler must be one of antithetic, uniform, got 'sobol'"),
    ({"loss_normalization": "batch"}, "loss_normalization must be one of token, sequence, got 'batch'"),
])
def test_bad_trainer_options(tmp_path, options, expected):
    with pytest.raises(ValueError) as info:
        MDLMConfig(output_dir=str(tmp_path), **options)
    assert str(info.value) == expected


def test_trainer_without_a_mask_token(tmp_path):
    from dllm.pipelines.llama3 import Llama3ForMaskedLM

    model = Llama3ForMaskedLM(tiny_llama_config())
    with pytest.raises(ValueError) as info:
        MDLMTrainer(model=model, args=MDLMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert str(info.value) == ("mask token id None is not a row of the embedding matrix (128 rows); call "
                               "dllm.core.models.add_mask_token(model, tokenizer) before training")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--schedule", "cosinus"], "argument --schedule: invalid choice: 'cosinus' (choose from "
                                f"{', '.join(map(repr, SCHEDULES))})"),
    (["--time_eps", "2"], "time_eps must be in [0, 1], got 2.0"),
    (["--max_seq_length", "0"], "max_seq_length must be a positive integer, got 0"),
    (["--gen_length", "0"], "gen_length must be a positive integer, got 0"),
    (["--r", "0"], "r (the LoRA rank) must be a positive integer, got 0"),
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8' (choose from 'auto', 'bfloat16', "
                            "'float16', 'float32')"),
    (["--nope", "1"], "Some specified arguments are not used by the HfArgumentParser: ['--nope', '1']"),
])
def test_bad_sft_flags(tmp_path, argv, expected):
    with pytest.raises(UsageError) as info:
        parse_args(["--output_dir", str(tmp_path), *argv])
    assert " ".join(str(info.value).split()) == expected


# ---- checkpoints and models ---------------------------------------------------------------------------------
@pytest.fixture
def base(tmp_path, char_tokenizer):
    """A tiny causal LLaMA checkpoint whose tokenizer has no mask token."""
    path, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    return path


def test_model_path_that_does_not_exist(tmp_path):
    with pytest.raises(UsageError) as info:
        build_model_and_tokenizer(str(tmp_path / "nope"), ModelArguments())
    assert str(info.value) == f"{tmp_path}/nope: no such checkpoint folder"


def test_model_folder_without_config(tmp_path):
    with pytest.raises(UsageError) as info:
        build_model_and_tokenizer(str(tmp_path), ModelArguments())
    assert str(info.value) == f"{tmp_path}: not a checkpoint folder (no config.json)"


def test_corrupt_weights_file_is_named(base):
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(UsageError) as info:
        build_model_and_tokenizer(str(base), ModelArguments())
    assert str(info.value) == (f"{weights}: corrupt or truncated weights file (Error while deserializing header: "
                               "invalid header length); re-save or re-download it")


def test_tokenizer_without_chat_template_is_refused_at_start(base):
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in base.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(UsageError) as info:
        build_model_and_tokenizer(str(base), ModelArguments())
    assert str(info.value) == (f"{base}: the tokenizer has no chat template, which SFT renders every conversation "
                               "with; start from an instruct/chat checkpoint or save a chat_template with the "
                               "tokenizer")


@pytest.mark.parametrize(("mask_token", "expected"), [
    ("a", "{base}: --mask_token 'a' is already ordinary token {id} of the tokenizer, so masked positions could not "
          "be told from that text; choose a string that is not in the vocabulary (default '<|mdm_mask|>') or a "
          "reserved special token"),
    ("", "--mask_token must be a non-empty string (default '<|mdm_mask|>'), got ''"),
    ("hello", "{base}: --mask_token 'hello' is ordinary text, which the tokenizer would then encode as the mask "
              "token wherever the data contains it; use markup that text does not hold (default '<|mdm_mask|>') "
              "or a reserved special token"),
])
def test_mask_token_that_cannot_be_added(base, char_tokenizer, mask_token, expected):
    """No room for a mask token: the tokenizer has none and the one asked for is an ordinary token already."""
    with pytest.raises(UsageError) as info:
        build_model_and_tokenizer(str(base), ModelArguments(mask_token=mask_token))
    assert str(info.value) == expected.format(base=base, id=char_tokenizer.convert_tokens_to_ids("a"))


def test_lora_target_modules_that_do_not_exist(base):
    model, _ = build_model_and_tokenizer(str(base), ModelArguments())
    with pytest.raises(UsageError) as info:
        apply_lora(model, ModelArguments(target_modules=["qq_proj", "k_proj", "attn"]), gradient_checkpointing=False)
    assert str(info.value) == ("--target_modules qq_proj attn: no module of Llama3ForMaskedLM has that name; "
                               "its linear layers are: down_proj gate_proj k_proj lm_head o_proj q_proj up_proj "
                               "v_proj")


def _remote_code_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint whose config.json points at its own configuration module, which touches ``marker``."""
    path.mkdir()
    (path / "configuration_x.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n\n\nclass XConfig(PretrainedConfig):\n    model_type = 'xmodel'\n")
    (path / "config.json").write_text(json.dumps({"model_type": "xmodel",
                                                  "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    return path


def test_checkpoint_code_is_never_run_without_trust_remote_code(tmp_path):
    from transformers import AutoConfig

    marker = tmp_path / "ran"
    checkpoint = _remote_code_checkpoint(tmp_path / "remote", marker)
    for load in (lambda: load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu")),
                 lambda: build_model_and_tokenizer(str(checkpoint), ModelArguments())):
        with pytest.raises(UsageError) as info:
            load()
        assert str(info.value) == (f"{checkpoint}: the checkpoint ships its own Python code (auto_map), which dllm "
                                   "does not run unless asked; review that code, then pass --trust_remote_code True")
    assert not marker.exists()
    assert not [name for name in sys.modules if "configuration_x" in name]
    AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=True)  # the same load with the flag runs it
    assert marker.exists()


# ---- the command line: one stderr line, exit status 2, no traceback ------------------------------------------------
def _cli_cases(tmp: Path, base: Path) -> dict[str, tuple[list[str], str]]:
    data = alpaca_fixture(tmp / "a.json")
    bad_rows = tmp / "bad.jsonl"
    bad_rows.write_text(_jsonl(GOOD, _messages(("user", "hi"), ("assistant", 5))))
    remote = _remote_code_checkpoint(tmp / "remote", tmp / "ran")
    model = ["--model_name_or_path", str(base), "--output_dir", str(tmp / "out"), "--use_cpu", "True",
             "--report_to", "none"]
    return {
        "sft missing model": (["sft", "--model_name_or_path", str(tmp / "nope")],
                              f"dllm sft: {tmp}/nope: no such checkpoint folder"),
        "sft untrusted code": (["sft", "--model_name_or_path", str(remote), "--dataset_args", str(data)],
                               f"dllm sft: {remote}: the checkpoint ships its own Python code (auto_map), which "
                               "dllm does not run unless asked; review that code, then pass --trust_remote_code True"),
        "sft unknown schedule": (["sft", *model, "--schedule", "cosinus"],
                                 "dllm sft: argument --schedule: invalid choice: 'cosinus' (choose from "
                                 f"{', '.join(map(repr, SCHEDULES))})"),
        "sft zero batch size": (["sft", *model, "--per_device_train_batch_size", "0"],
                                "dllm sft: per_device_train_batch_size must be a positive integer, got 0"),
        "sft time_eps": (["sft", *model, "--time_eps", "-1"], "dllm sft: time_eps must be in [0, 1], got -1.0"),
        "sft missing data file": (["sft", *model, "--dataset_args", str(tmp / "nope.json")],
                                  f"dllm sft: dataset file not found: {tmp}/nope.json"),
        "sft bad row": (["sft", *model, "--dataset_args", str(bad_rows)],
                        f"dllm sft: {bad_rows} row 1: messages[1].content must be a string, got int"),
        "sft unknown hub dataset": (["sft", *model, "--dataset_args", "nonexistent/xyz"],
                                    "dllm sft: nonexistent/xyz: not a local file or folder, and not a loadable "
                                    "Hugging Face Hub dataset (Couldn't reach 'nonexistent/xyz' on the Hub "
                                    "(OfflineModeIsEnabled))"),
        "sft counts larger than the data": (["sft", *model, "--dataset_args", f"{data}[train:100]"],
                                            f"dllm sft: {data} train: asked for 100 rows but only 24 are available"),
        "sft lora targets": (["sft", *model, "--dataset_args", str(data), "--lora", "True", "--target_modules",
                              "qq_proj"],
                             "dllm sft: --target_modules qq_proj: no module of Llama3ForMaskedLM has that "
                             "name; its linear layers are: down_proj gate_proj k_proj lm_head o_proj q_proj up_proj "
                             "v_proj"),
        "sample missing checkpoint": (["sample", str(tmp / "nope"), "hi"],
                                      f"dllm sample: {tmp}/nope: no such checkpoint folder"),
        "sample bad flag value": (["sample", str(base), "hi", "--cache", "everything"],
                                  "dllm sample: argument --cache: invalid choice: 'everything' (choose from 'none', "
                                  "'prefix', 'dual', 'block')"),
        "merge-lora missing adapter": (["merge-lora", str(base), str(tmp / "nope"), str(tmp / "merged")],
                                       f"dllm merge-lora: {tmp}/nope: no such adapter folder"),
    }


# The LoRA check runs after the data and the weights loaded, so what they print first is progress, not part of the
# error: the recipe's INFO lines for the loaded data and the added mask row, and transformers' weight-loading bar.
# Filtered by these exact shapes only, and only in that case.
_PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO dllm\.(data\.loading: .*: train \d+ rows|"
                       r"core\.models\.masked_lm: added the mask token .*)|Loading weights: .*)$")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every command-line case, run one after another in one fresh interpreter, keyed by case: ``((status, stdout,
    stderr), expected stderr line)``."""
    from dllm.demo.tokenizer import build_char_tokenizer

    tmp = tmp_path_factory.mktemp("cli")
    char_tokenizer = build_char_tokenizer()
    base, _ = checkpoint_without_mask_token(tmp, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cases = _cli_cases(tmp, base)
    runs = run_dllm_cases({name: argv for name, (argv, _) in cases.items()}, env, ROOT)
    return {name: (runs[name], cases[name][1]) for name in cases}


CLI_CASE_NAMES = ["sft missing model", "sft untrusted code", "sft unknown schedule", "sft zero batch size",
                  "sft time_eps", "sft missing data file", "sft bad row", "sft unknown hub dataset",
                  "sft counts larger than the data", "sft lora targets", "sample missing checkpoint",
                  "sample bad flag value", "merge-lora missing adapter"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASE_NAMES)
def test_command_line_prints_one_line_and_exits_2(cli_runs, case):
    (status, out, err), expected = cli_runs[case]
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    if case == "sft lora targets":
        lines = [line for line in lines if not _PROGRESS.match(line)]
    assert (status, lines, out) == (2, [expected], "")


# =====================================================================================================================
# First contact (issue 16): image files, text models given images, checkpoints without tokenizer files, hub ids
# offline or unreachable, truncated weights. (Resume and output folders: tests/test_checkpoints.py; merge-lora:
# tests/test_merge_lora.py; the dllm command itself: tests/test_cli.py.)
# =====================================================================================================================
def _image_rows(tmp: Path, missing: int) -> Path:
    """Two ``{messages, images}`` rows whose images are PNG paths beside the file; row ``missing``'s file absent."""
    from tests.helpers import write_vl_rows

    data = write_vl_rows(tmp, n=2)
    (tmp / "img" / f"{missing}.png").unlink()
    return data


def test_a_missing_image_file_is_found_when_loading(tmp_path, caplog):
    """Found with the row and field that name it, not as a FileNotFoundError in the collator mid-training; with
    skip_invalid a counted, logged skip."""
    data = _image_rows(tmp_path, missing=1)
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(data))
    assert str(info.value) == f"{data} row 1: images[0]: image file not found: {tmp_path}/img/1.png"
    with caplog.at_level(logging.WARNING, logger="dllm.data.messages"):
        kept = load_sft_dataset(str(data), skip_invalid=True)["train"]
    assert kept["images"] == [[f"{tmp_path}/img/0.png"]]
    assert caplog.messages == [f"{data}: skipped 1 of 2 rows as invalid (missing image file: 1). First of each: "
                               f"{data} row 1: images[0]: image file not found: {tmp_path}/img/1.png"]


def test_rows_with_images_for_a_text_model_are_refused(tmp_path):
    """A text model would train on the <image> placeholders as text and never see the images."""
    data = _image_rows(tmp_path, missing=0)
    (tmp_path / "img" / "0.png").touch()
    with pytest.raises(UsageError) as info:
        load_sft_dataset(str(data), text_only=True)
    assert str(info.value) == (f"{data} row 0: 'images' holds images, but the model reads text only (it would train "
                               "on the <image> placeholders as text and never see the images); use a vision-language "
                               "checkpoint (dllm sft qwen3_vl) or remove the images")
    text = alpaca_fixture(tmp_path / "a.json")
    assert len(load_sft_dataset(str(text), text_only=True)["train"]) == 24


def test_a_checkpoint_folder_without_tokenizer_files(base):
    from dllm.auto import load_processor, load_tokenizer

    for file in base.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            file.unlink()
    for load, what in ((load_tokenizer, "tokenizer"), (load_processor, "processor")):
        with pytest.raises(UsageError) as info:
            load(str(base))
        assert str(info.value) == (f"{base}: cannot load the {what}: the checkpoint folder has no tokenizer files "
                                   "(tokenizer_config.json, tokenizer.json); save the tokenizer beside the model "
                                   "(tokenizer.save_pretrained(folder)) or copy its files from the model this one "
                                   "came from")
    with pytest.raises(UsageError, match="the checkpoint folder has no tokenizer files"):
        build_model_and_tokenizer(str(base), ModelArguments())


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["offline", "unreachable", "unreachable, cached"])
def test_a_hub_id_the_hub_cannot_serve_is_said_at_once(monkeypatch, tmp_path, case):
    """No retries for half a minute and no false "no such model": offline mode or the Hub's refusal, and whether
    the cache has the model (then offline mode loads it)."""
    from huggingface_hub import constants

    from dllm.auto import load_config

    port = _closed_port()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", case == "offline")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if case.endswith("cached"):  # the hub cache's layout: refs/main names the snapshot holding the files
        snapshot = tmp_path / "models--org--model" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (tmp_path / "models--org--model" / "refs").mkdir()
        (tmp_path / "models--org--model" / "refs" / "main").write_text("0" * 40)
    began = time.perf_counter()
    with pytest.raises(UsageError) as info:
        load_config("org/model")
    assert time.perf_counter() - began < 5
    reason = f"(127.0.0.1:{port}: Connection refused)"
    assert str(info.value) == {
        "offline": "org/model: no such checkpoint folder, nor a model in the local Hugging Face cache (the Hub is "
                   "off: HF_HUB_OFFLINE=1); download it while online, or give a checkpoint folder",
        "unreachable": f"org/model: no such checkpoint folder, the Hugging Face Hub cannot be reached {reason}, and "
                       "the local cache does not have the model; check the network, or give a checkpoint folder",
        "unreachable, cached": f"org/model: cannot reach the Hugging Face Hub {reason}; the local cache has the "
                               "model: set HF_HUB_OFFLINE=1 to load it from there"}[case]


@pytest.mark.slow
def test_the_command_line_says_an_unreachable_hub_in_one_line(tmp_path):
    """What the user sees: one line, exit status 2, at once (not 10 "Retrying" lines over 30 s)."""
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    # The same command offline (no network path at all), started alongside: the same interpreter start and
    # imports under the same load, so the difference of their times is the hub check alone (retries: >= 20 s).
    command = [sys.executable, "-m", "dllm.cli", "sample", "org/model", "hi"]
    began = time.perf_counter()
    offline = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                               env={**env, "HF_HUB_OFFLINE": "1"})
    online = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    finished: dict[str, float] = {}
    while len(finished) < 2 and time.perf_counter() - began < 120:
        for name, process in (("offline", offline), ("online", online)):
            if name not in finished and process.poll() is not None:
                finished[name] = time.perf_counter() - began
        time.sleep(0.05)
    stdout, stderr = online.communicate(timeout=5)
    run = subprocess.CompletedProcess(command, online.returncode, stdout, stderr)
    assert finished["online"] < finished["offline"] + 10, finished
    assert (run.returncode, run.stdout, run.stderr.count("\n")) == (2, "", 1), run.stderr
    assert run.stderr.startswith("dllm sample: org/model: no such checkpoint folder, the Hugging Face Hub cannot be "
                                 "reached (127.0.0.1:")


def test_truncated_weights_name_the_file(base):
    """A model.safetensors cut short after its header (a copy or save that was stopped) is named."""
    from dllm.auto import AutoModelForMaskedDiffusion

    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UsageError) as info:
        AutoModelForMaskedDiffusion.from_pretrained(str(base))
    assert str(info.value) == (f"{weights}: corrupt or truncated weights file (Error while deserializing header: "
                               "incomplete metadata, file not fully covered); re-save or re-download it")


# ==== inference: sampler values, prompt lengths, outputs, ports, adapters (the inference helper's section) =========
from dllm.core.sampling import DiffusionGenerationConfig  # noqa: E402
from dllm.core.sampling.config import SamplerSettingError  # noqa: E402
from tests.helpers import save_tiny_masked_lm  # noqa: E402


@pytest.fixture(scope="module")
def sampling_checkpoint(tmp_path_factory):
    """A tiny masked LM (256 positions, saved gen_length 8) the verbs can load."""
    return save_tiny_masked_lm(tmp_path_factory.mktemp("inference") / "tiny", gen_length=8)


@pytest.mark.parametrize(("settings", "field", "message"), [
    ({"gen_length": 8, "steps": 2, "block_size": 2}, "steps",
     "must be at least the number of blocks, 4 (gen_length 8 in blocks of 2), got 2"),
    ({"gen_length": 8, "steps": 9}, "steps", "must be at most gen_length (8), got 9"),
    ({"steps": "abc"}, "steps", "must be an integer or None, got 'abc'"),
    ({"threshold": 5.0}, "threshold", "must be None or in (0, 1], got 5.0"),
    ({"threshold": -1.0}, "threshold", "must be None or in (0, 1], got -1.0"),
    ({"threshold": 0.5, "remasking": "entropy"}, "threshold",
     "must be None or at most 0 with entropy remasking (it compares minus the entropy), got 0.5"),
    ({"temperature": 1e9}, "temperature", "must be in [0, 2.0], got 1000000000.0"),
    ({"temperature": float("nan")}, "temperature", "must be a number, got nan"),
    ({"top_p": 0.0}, "top_p", "must be None or in (0, 1], got 0.0"),
    ({"top_k": True}, "top_k", "must be an integer or None, got True"),
    ({"cfg_scale": float("inf")}, "cfg_scale", "must be a finite number >= 0, got inf"),
    ({"cache": "everything"}, "cache", "must be one of none, prefix, dual, block, got 'everything'"),
    ({"gen_length": 0}, "gen_length", "must be at least 1, got 0"),
    ({"mask_token_id": -1}, "mask_token_id", "must be None or a token id (>= 0), got -1"),
])
def test_every_sampler_value_is_checked_by_the_config_naming_the_field(settings, field, message):
    with pytest.raises(SamplerSettingError) as info:
        DiffusionGenerationConfig(**settings)
    assert (info.value.field, info.value.message) == (field, message)
    assert str(info.value) == f"DiffusionGenerationConfig.{field} {message}"
    from dataclasses import replace

    with pytest.raises(SamplerSettingError):  # replace runs the same checks
        replace(DiffusionGenerationConfig(gen_length=8), **settings)


def test_entropy_threshold_at_most_zero_is_accepted():
    assert DiffusionGenerationConfig(remasking="entropy", threshold=-0.5).threshold == -0.5


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"gen_length": 0}, "--gen_length must be at least 1, got 0"),  # the flag, not the saved file
    ({"steps": 2, "block_size": 2}, "--steps must be at least the number of blocks, 4 (gen_length 8 in blocks of 2), "
                                    "got 2"),
    ({"gen_length": 100000}, "{ckpt}: gen_length 100000 leaves no room for a prompt in the model's 256 positions "
                             "(max_position_embeddings)"),
])
def test_sampler_flags_are_blamed_on_the_flag(sampling_checkpoint, overrides, expected):
    with pytest.raises(UsageError) as info:
        load_checkpoint(str(sampling_checkpoint), CheckpointArguments(device="cpu"), **overrides)
    assert str(info.value) == expected.format(ckpt=sampling_checkpoint)


def test_sample_refuses_a_prompt_beyond_the_models_positions_before_any_batch(sampling_checkpoint, monkeypatch):
    from dllm.inference import sample
    from dllm.inference.engine import Engine

    monkeypatch.setattr(Engine, "run", lambda *a, **k: pytest.fail("the sampler ran"))
    with pytest.raises(UsageError) as info:
        sample.main([str(sampling_checkpoint), "ok", "x" * 300, "--device", "cpu"])
    assert str(info.value) == ("prompt 2 ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'): 303 tokens plus gen_length 8 exceed "
                               "the model's 256 positions (max_position_embeddings)")


def test_sample_checks_the_output_path_before_any_work(tmp_path, monkeypatch):
    from dllm.inference import sample

    monkeypatch.setattr(sample, "load_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError) as info:
        sample.main([str(tmp_path / "ckpt"), "hi", "--output", str(tmp_path / "file" / "out.jsonl")])
    assert str(info.value) == (f"--output {tmp_path / 'file' / 'out.jsonl'}: cannot write there (a file stands where "
                               "a folder of the path belongs)")
    writable = tmp_path / "new" / "out.jsonl"
    with pytest.raises(pytest.fail.Exception):  # a writable path passes the check and leaves no file behind
        sample.main([str(tmp_path / "ckpt"), "hi", "--output", str(writable)])
    assert not writable.exists()


def test_sample_prompt_file_with_a_lone_surrogate_is_one_line(tmp_path):
    from dllm.inference.sample import read_prompt_file

    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "bad \\ud800 text"}\n')
    with pytest.raises(UsageError) as info:
        read_prompt_file(tmp_path / "p.jsonl")
    assert str(info.value) == (f"{tmp_path / 'p.jsonl'}, line 2: not valid Unicode (a lone surrogate '\\ud800' at "
                               "character 4); send UTF-8 text")
    (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(UsageError, match=r"p.txt: not UTF-8 text \('utf-8' codec can't decode byte 0xe9"):
        read_prompt_file(tmp_path / "p.txt")


@pytest.mark.parametrize("verb", ["serve", "playground"])
def test_a_port_out_of_range_is_one_line_before_loading(verb, tmp_path, monkeypatch):
    pytest.importorskip("fastapi" if verb == "serve" else "gradio")
    pytest.importorskip("uvicorn" if verb == "serve" else "gradio")
    module = __import__(f"dllm.inference.{'server' if verb == 'serve' else 'playground'}", fromlist=["main"])
    monkeypatch.setattr(module, "load_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    with pytest.raises(UsageError) as info:
        module.main([str(tmp_path), "--port", "99999"])
    assert str(info.value) == "--port must be a TCP port number, 0 to 65535, got 99999"


def test_a_lora_adapter_folder_says_how_to_merge_it(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/b"}))
    with pytest.raises(UsageError) as info:
        load_checkpoint(str(adapter))
    assert str(info.value) == (f"{adapter}: a LoRA adapter (adapter_config.json), not a whole checkpoint; merge it into "
                               f"its base first: dllm merge-lora /b {adapter} OUT, then use OUT")


def test_checkpoint_code_for_a_known_model_type_is_named_in_one_log_line(sampling_checkpoint, tmp_path, caplog):
    import shutil

    marker = tmp_path / "ran"
    checkpoint = shutil.copytree(sampling_checkpoint, tmp_path / "own-code")
    (checkpoint / "configuration_x.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    config = json.loads((checkpoint / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="dllm.inference.loading"):
        load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu"))
    assert caplog.messages == [f"{checkpoint}: config.json names the checkpoint's own code (auto_map), which is not "
                               "run; using transformers' built-in Llama classes for model_type 'llama' "
                               "(--trust_remote_code True runs its code)"]
    assert not marker.exists()


def test_num_threads_is_set_and_checked(sampling_checkpoint):
    import torch

    before = torch.get_num_threads()
    try:
        load_checkpoint(str(sampling_checkpoint), CheckpointArguments(device="cpu", num_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UsageError) as info:
        load_checkpoint(str(sampling_checkpoint), CheckpointArguments(num_threads=-1))
    assert str(info.value) == "--num_threads must be at least 0 (0: torch's default), got -1"


def test_chat_settings_refuse_bad_values_and_keep_the_conversation(sampling_checkpoint, capsys):
    from dllm.inference.chat import Chat

    chat = Chat(load_checkpoint(str(sampling_checkpoint), CheckpointArguments(device="cpu")))
    chat.handle("hello")
    kept, config = list(chat.messages), chat.config
    for command in ("/settings steps=abc", "/settings steps=2 block_size=2", "/settings threshold=5",
                    "/settings temperature=1e9", "/settings gen_length=300"):
        assert chat.handle(command) is None
    assert (chat.messages, chat.config) == (kept, config)
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("dllm chat")] == [
        "dllm chat: settings unchanged: steps must be an integer or None, got 'abc'",
        "dllm chat: settings unchanged: steps must be at least the number of blocks, 4 (gen_length 8 in blocks of 2), "
        "got 2",
        "dllm chat: settings unchanged: threshold must be None or in (0, 1], got 5",
        "dllm chat: settings unchanged: temperature must be in [0, 2.0], got 1000000000.0",
        "dllm chat: settings unchanged: gen_length must leave room for a prompt in the model's 256 positions, got 300",
    ]
    assert chat.handle("again") is not None and len(chat.messages) == 4  # the conversation goes on


def test_chat_refuses_a_turn_beyond_the_models_positions_and_keeps_the_conversation(sampling_checkpoint, capsys):
    from dllm.inference.chat import Chat

    chat = Chat(load_checkpoint(str(sampling_checkpoint), CheckpointArguments(device="cpu")))
    chat.handle("hello")
    kept = list(chat.messages)
    assert chat.handle("x" * 300) is None and chat.messages == kept
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dllm chat: not answered: the conversation: ") and err.endswith(
        "tokens plus gen_length 8 exceed the model's 256 positions (max_position_embeddings); /reset starts a new "
        "conversation")


def test_playground_refuses_a_prompt_beyond_the_models_positions(sampling_checkpoint, monkeypatch):
    from dllm.inference.engine import ContextLengthError
    from dllm.inference.playground import Playground

    playground = Playground(load_checkpoint(str(sampling_checkpoint), CheckpointArguments(device="cpu")))
    with pytest.raises(ContextLengthError) as info:
        playground.prepare("x" * 300, 8, 8, 0, 0, "none")
    assert str(info.value) == ("the prompt: 303 tokens plus gen_length 8 exceed the model's 256 positions "
                               "(max_position_embeddings)")
    tokenizer = playground.loaded.tokenizer
    monkeypatch.setattr(type(tokenizer), "apply_chat_template", lambda *a, **k: pytest.fail("tokenised"))
    with pytest.raises(ContextLengthError) as info:  # far too long: refused from its length, before tokenising
        playground.prepare("x" * 100_000, 8, 8, 0, 0, "none")
    assert str(info.value) == ("the prompt: at least 3846 tokens (judged by its characters) exceed the model's 256 "
                               "positions (max_position_embeddings)")
