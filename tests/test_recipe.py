"""The one SFT recipe, in-process: parsing apart from running, ``--config`` files, the resolved options saved with
the run, the checkpoint's config read once, trl's flag names, defaults users bring from transformers."""

from __future__ import annotations

import logging

import pytest
import yaml
from transformers import LlamaForCausalLM, PretrainedConfig

from dllm.errors import UsageError
from dllm.options import RUN_CONFIG_NAME
from dllm.sft.config import DataArguments, ModelArguments, SFTConfig
from dllm.sft.recipe import main, make_parser, parse_args, run
from tests.helpers import alpaca_fixture, checkpoint_without_mask_token, tiny_llama_config

FLAGS = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--use_cpu", "True", "--report_to", "none",
         "--learning_rate", "1e-3", "--max_seq_length", "64", "--logging_steps", "1", "--save_steps", "2",
         "--eval_steps", "2", "--dtype", "float32"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from dllm.demo.tokenizer import build_char_tokenizer

    tmp = tmp_path_factory.mktemp("recipe")
    tokenizer = build_char_tokenizer()
    path, _ = checkpoint_without_mask_token(tmp, tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(tokenizer) - 1))
    return path, alpaca_fixture(tmp / "alpaca.json")


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """One 4-step run of ``dllm sft`` (the defaults: checkpoints every --save_steps, the test split evaluated),
    counting how often a config.json is read."""
    checkpoint, data = base
    out = tmp_path_factory.mktemp("out") / "run"
    reads = []
    original = PretrainedConfig.get_config_dict.__func__

    def counting(cls, source, **kwargs):
        reads.append(str(source))
        return original(cls, source, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(PretrainedConfig, "get_config_dict", classmethod(counting))
    try:
        trainer = run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", f"{data}[train:16,test:4]",
                             "--output_dir", str(out), *FLAGS])
    finally:
        patch.undo()
    return trainer, out, reads


def test_the_checkpoint_config_is_read_once(base, trained):
    _, _, reads = trained
    assert reads.count(str(base[0])) == 1, reads


def test_defaults_follow_transformers_save_steps_and_evaluate_the_test_split(trained):
    trainer, out, _ = trained
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert any("eval_loss" in entry for entry in trainer.state.log_history)


def test_the_resolved_options_are_saved_and_read_back_by_config(trained):
    trainer, out, _ = trained
    saved = yaml.safe_load((out / RUN_CONFIG_NAME).read_text())
    assert saved["max_steps"] == 4 and saved["r"] == 16 and saved["objective"] == "mdlm"
    model_args, data_args, training_args = parse_args(["--config", str(out / RUN_CONFIG_NAME)])
    assert training_args.max_steps == 4 and training_args.learning_rate == trainer.args.learning_rate
    assert data_args.dataset_args == saved["dataset_args"] and model_args.model_name_or_path == saved[
        "model_name_or_path"]
    assert training_args.to_dict() == trainer.args.to_dict()


def test_config_file_values_are_defaults_and_the_command_line_wins(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("learning_rate: 0.5\nmax_steps: 7\nlora: true\noutput_dir: x\n")
    model_args, _, training_args = parse_args(["--config", str(file), "--max_steps", "9"])
    assert (training_args.learning_rate, training_args.max_steps, model_args.lora) == (0.5, 9, True)


@pytest.mark.parametrize("text,message", [
    ("learnig_rate: 0.1\n", r"'learnig_rate' is not an option of this command; did you mean learning_rate\?"),
    ("[1, 2]\n", "expected a mapping of option names"),
    ("a: [\n", "not valid YAML"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, text, message):
    file = tmp_path / "run.yaml"
    file.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        parse_args(["--config", str(file)])
    assert str(file) in str(err.value)


def test_trl_names_are_aliases_and_a_misspelt_flag_gets_a_suggestion():
    model_args, data_args, _ = parse_args(["--lora_r", "8", "--use_peft", "True", "--max_length", "99",
                                           "--dataset_name", "d.json", "--lora_target_modules", "q_proj",
                                           "--output_dir", "x"])
    assert (model_args.r, model_args.lora, data_args.max_seq_length, data_args.dataset_args,
            model_args.target_modules) == (8, True, 99, "d.json", ["q_proj"])
    with pytest.raises(UsageError, match="did you mean --learning_rate"):
        parse_args(["--learnig_rate", "1"])


@pytest.mark.parametrize("flag,value", [("--learning_rate", "-1"), ("--save_steps", "0"), ("--warmup_steps", "-2"),
                                        ("--num_train_epochs", "0")])
def test_invalid_training_values_are_refused_while_parsing(flag, value):
    with pytest.raises(UsageError, match=flag[2:]):
        parse_args([flag, value, "--output_dir", "x"])


def test_main_runs_on_parsed_options_without_a_command_line(base, tmp_path, caplog):
    """The trl pattern: main(dataclasses). A dataset without a test split is not evaluated (no error although
    evaluation is on by default)."""
    checkpoint, data = base
    training = SFTConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                         report_to="none", save_strategy="no")
    with caplog.at_level(logging.INFO):
        trainer = main(ModelArguments(model_name_or_path=str(checkpoint), dtype="float32"),
                       DataArguments(dataset_args=f"{data}[train:4]", max_seq_length=64), training)
    assert trainer.state.global_step == 1 and trainer.args.eval_strategy == "no"


def test_help_names_the_verb_and_the_family_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        run("gemma2", ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dllm sft gemma2") and "google/gemma-2-2b-it" in out
    with pytest.raises(SystemExit):
        run("qwen3_vl", ["--help"])
    assert "--freeze_vision" in capsys.readouterr().out


def test_an_unknown_family_lists_the_families():
    with pytest.raises(UsageError, match="unknown family 'bogus'; choose one of gemma2, llama3, qwen3_vl"):
        run("bogus", [])


def test_family_parsers_differ_only_by_the_family_options():
    from dllm.auto import FAMILIES

    extra = set(make_parser(FAMILIES["qwen3_vl"]).option_names()) - set(make_parser().option_names())
    assert {"--freeze_vision", "--freeze_merger", "--image_root"} <= extra
    assert all(("freeze" in name or "image" in name) for name in extra), extra


def test_an_output_dir_that_is_the_model_is_refused_before_any_work(base):
    checkpoint, data = base
    with pytest.raises(UsageError, match="is the model being read"):
        run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", str(data), "--output_dir",
                   str(checkpoint), *FLAGS])
    assert not (checkpoint / RUN_CONFIG_NAME).exists()  # nothing was written into it


def test_resume_true_without_a_checkpoint_is_one_line(base, tmp_path):
    checkpoint, data = base
    with pytest.raises(UsageError, match="--resume_from_checkpoint True: no checkpoint-N folder"):
        run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", str(data), "--output_dir",
                   str(tmp_path / "fresh"), "--resume_from_checkpoint", "True", *FLAGS])


def test_a_text_model_refuses_rows_with_images(base, tmp_path):
    from tests.helpers import write_vl_rows

    checkpoint, _ = base
    with pytest.raises(UsageError, match="image"):
        run(None, ["--model_name_or_path", str(checkpoint), "--dataset_args", str(write_vl_rows(tmp_path)),
                   "--output_dir", str(tmp_path / "out"), *FLAGS])


def test_every_objectives_options_pickle_as_trainer_saves_them(tmp_path):
    import pickle

    from dllm.sft.config import OBJECTIVES, sft_config_class

    for objective in OBJECTIVES:
        options = sft_config_class(objective)(output_dir=str(tmp_path))
        assert pickle.loads(pickle.dumps(options)).to_dict() == options.to_dict()
