import math
import warnings
from dataclasses import fields

import pytest
import torch
from datasets import Dataset
from transformers import HfArgumentParser, TrainingArguments, default_data_collator

from dllm.core.schedules import SCHEDULES
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_llama_config

MASK_ID = 4
VOCAB = 32


def copy_task_dataset(n=64, length=12, prompt=4, seed=0):
    """Random prompts, answers drawn from two tokens only: the best loss is log 2 against log 32 at
    initialisation, so a few dozen steps show a clear fall. Ragged answer lengths (2 to 6 tokens)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p = torch.randint(5, VOCAB, (prompt,), generator=g)
        ids = torch.cat([p, torch.randint(7, 9, (length - prompt,), generator=g)])
        labels = ids.clone()
        labels[:prompt] = -100
        labels[prompt + 2 + i % 5:] = -100  # 2..6 answer tokens
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": [1] * length})
    return Dataset.from_list(rows)


class Spy(torch.nn.Module):
    """Wraps a model and records the noisy input_ids it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.seen = []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.clone())
        return self.inner(input_ids=input_ids, **kwargs)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=VOCAB))
    model.config.mask_token_id = MASK_ID
    return model


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=3e-3,
                  max_steps=30, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
                  seed=0, data_seed=0, warmup_steps=0, lr_scheduler_type="constant", dataloader_drop_last=True)
    values.update(overrides)
    return MDLMConfig(**values)


def test_training_lowers_loss_changes_every_parameter_and_logs(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MDLMTrainer(model=model, args=config(tmp_path, max_steps=40, eval_strategy="no"),
                          train_dataset=copy_task_dataset(), eval_dataset=copy_task_dataset(16, seed=1),
                          data_collator=default_data_collator)
    first_eval = trainer.evaluate()["eval_loss"]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) >= 4 and all(math.isfinite(e["loss"]) for e in logs)
    assert all(0.0 < e["masked_fraction"] <= 1.0 for e in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]
    final = trainer.evaluate()
    assert final["eval_loss"] < 0.7 * first_eval and "eval_masked_fraction" in final
    for name, param in model.named_parameters():
        assert not torch.equal(param.detach(), before[name]), f"{name} did not change"


def test_lora_trains_adapters_only(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MDLMTrainer(model=model, args=config(tmp_path, max_steps=10), train_dataset=copy_task_dataset(),
                          data_collator=default_data_collator)
    assert trainer.mask_token_id == MASK_ID  # found through the PEFT wrapper
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n for n in trainable if "lora_A" in n} and {n for n in trainable if "lora_B" in n}
    assert changed == trainable  # every adapter tensor moved (A too, once B left zero); the frozen base never


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_gradient_accumulation_matches_full_batch(tmp_path, normalization, accepts_loss_kwargs):
    """Batch 8 equals 4 x accumulation 2. time_eps=1 makes t=1: every answer token masked, weight 1.

    Also when Trainer thinks the model takes no loss kwargs (its model_accepts_loss_kwargs is then False): the
    trainer's own count and loss_is_scaled_for_ga do not depend on it."""
    data = copy_task_dataset(8)
    results = []
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_model(seed=1)
        model.accepts_loss_kwargs = accepts_loss_kwargs  # what Trainer reads first (trainer.py, __init__)
        args = config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, time_eps=1.0,
                      loss_normalization=normalization)
        trainer = MDLMTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
        assert trainer.model_accepts_loss_kwargs is accepts_loss_kwargs
        trainer.train()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
        assert trainer.state.log_history[-1]["train_loss"] > 0
    initial = dict(tiny_model(seed=1).named_parameters())
    for name, full in results[0].items():
        assert not torch.equal(full, initial[name].detach())
        assert torch.allclose(full, results[1][name], atol=1e-6), name


def test_plain_training_arguments_are_accepted_and_keep_their_values(tmp_path):
    """TrainingArguments' remove_unused_columns=True is kept, not overwritten, with a warning."""
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    with pytest.warns(UserWarning, match="remove_unused_columns=True.*SFTDataCollator"):
        trainer = MDLMTrainer(model=tiny_model(), args=args, train_dataset=copy_task_dataset(8),
                              data_collator=default_data_collator)
    assert isinstance(trainer.args, MDLMConfig) and trainer.args.max_steps == 1
    assert trainer.args.schedule == "linear" and trainer.args.remove_unused_columns is True
    trainer.train()  # pre-tokenized columns are forward arguments: nothing the collator needs is dropped


def test_remove_unused_columns_true_warns_and_is_kept(tmp_path):
    with pytest.warns(UserWarning, match="remove_unused_columns=True") as record:
        args = MDLMConfig(output_dir=str(tmp_path), remove_unused_columns=True)
    assert args.remove_unused_columns is True
    assert "raw columns" in str(record[0].message) and "remove_unused_columns=False" in str(record[0].message)
    with warnings.catch_warnings(record=True) as default_record:
        warnings.simplefilter("always")
        assert MDLMConfig(output_dir=str(tmp_path)).remove_unused_columns is False
    assert not [w for w in default_record if "remove_unused_columns" in str(w.message)]


@pytest.mark.parametrize("schedule", [name for name in SCHEDULES if name != "polynomial"])
def test_schedule_power_with_a_schedule_without_power_is_an_error(tmp_path, schedule):
    with pytest.raises(ValueError, match=f"schedule_power=2.0 was given with schedule '{schedule}'.*polynomial"):
        MDLMConfig(output_dir=str(tmp_path), schedule=schedule, schedule_power=2.0)
    assert MDLMConfig(output_dir=str(tmp_path), schedule="polynomial", schedule_power=2.0).schedule_power == 2.0
    assert MDLMConfig(output_dir=str(tmp_path), schedule=schedule).schedule_power is None


def test_command_line_lists_the_schedules_and_rejects_others(tmp_path, capsys):
    parser = HfArgumentParser(MDLMConfig)
    assert "--schedule {" + ",".join(SCHEDULES) + "}" in parser.format_help()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--schedule", "quadratic"])
    assert exit_info.value.code == 2
    assert "argument --schedule: invalid choice: 'quadratic'" in capsys.readouterr().err
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--schedule", "sqrt"])
    assert args.schedule == "sqrt"


def test_time_eps_outside_the_unit_interval_is_an_error(tmp_path):
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="time_eps must be in \\[0, 1\\]"):
            MDLMConfig(output_dir=str(tmp_path), time_eps=bad)


def test_masked_fraction_is_summed_on_device_and_averaged_at_log(tmp_path):
    """Micro-batches with 1/4 and 3/4 of their answer tokens masked log 1/2; nothing is read per step."""
    trainer = MDLMTrainer(model=tiny_model(), args=config(tmp_path), data_collator=default_data_collator)
    labels = torch.zeros(1, 4, dtype=torch.long)
    for masked_count in (1, 3):
        masked = torch.arange(4)[None] < masked_count  # [1, 4]
        trainer._record_metrics(True, masked, labels)
    assert isinstance(trainer._metric_sums["train"]["masked_fraction"], torch.Tensor)  # no host float yet
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["masked_fraction"] == pytest.approx(0.5)
    trainer.log({"loss": 1.0})  # nothing recorded since: no stale value
    assert "masked_fraction" not in trainer.state.log_history[-1]


def test_missing_mask_token_is_a_clear_error(tmp_path):
    model = tiny_model()
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="add_mask_token"):
        MDLMTrainer(model=model, args=config(tmp_path), train_dataset=copy_task_dataset(8),
                    data_collator=default_data_collator)


def test_prompt_tokens_are_never_masked_in_compute_loss(tmp_path):
    model = tiny_model()
    trainer = MDLMTrainer(model=model, args=config(tmp_path, time_eps=1.0), train_dataset=copy_task_dataset(8),
                          data_collator=default_data_collator)
    batch = default_data_collator([copy_task_dataset(8)[i] for i in range(8)])
    spy = Spy(model)
    trainer.compute_loss(spy, batch)
    noisy = spy.seen[0]
    answer = batch["labels"] != -100
    assert (noisy[answer] == MASK_ID).all()  # t = 1: every answer token masked
    assert torch.equal(noisy[~answer], batch["input_ids"][~answer])  # prompt untouched


def test_processes_draw_disjoint_noise_from_a_shared_seed(tmp_path):
    """Processes are seeded alike; each must still get its own t (a slice of one global antithetic grid) and
    its own masks. Simulated by calling compute_loss as rank 0 and rank 1 of 2 from the same RNG state."""

    class TwoProcesses(MDLMConfig):
        rank = 0
        world_size = property(lambda self: 2)
        process_index = property(lambda self: self.rank)

    model = tiny_model()
    rows = copy_task_dataset(4, length=40)
    batch = default_data_collator([rows[i] for i in range(4)])
    answer = batch["labels"] != -100
    noisy, fractions = [], []
    for rank in (0, 1):  # a fresh trainer per rank: both stand at the same step and micro-batch, as real ranks do
        trainer = MDLMTrainer(model=model, args=config(tmp_path), data_collator=default_data_collator)
        trainer.args = TwoProcesses(**{k: v for k, v in vars(config(tmp_path)).items() if not k.startswith("_")
                                       and k in {f.name for f in fields(MDLMConfig) if f.init}})
        trainer.args.rank = rank
        spy = Spy(model)
        torch.manual_seed(123)
        trainer.compute_loss(spy, batch)
        noisy.append(spy.seen[0])
        fractions.append(((spy.seen[0] == MASK_ID) & answer).sum(1) / answer.sum(1))  # ~ t per row
    assert not torch.equal(noisy[0], noisy[1])
    # Together the two ranks' 8 times fill the 8 strata of one antithetic grid (up to masking noise).
    assert abs(torch.cat(fractions).mean().item() - 0.5) < 0.15


def test_uniform_weighting_drops_the_elbo_weight(tmp_path):
    """Cosine schedule at t = 1: the ELBO weight is (pi/2)/tan(pi/4) = pi/2; 'uniform' uses 1."""
    batch = default_data_collator([copy_task_dataset(8)[i] for i in range(8)])
    losses = {}
    for weighting in ("elbo", "uniform"):
        trainer = MDLMTrainer(model=tiny_model(), args=config(tmp_path, time_eps=1.0, schedule="cosine",
                                                                 loss_weighting=weighting),
                              data_collator=default_data_collator)
        losses[weighting] = trainer.compute_loss(trainer.model, batch).item()
    assert math.isclose(losses["elbo"], math.pi / 2 * losses["uniform"], rel_tol=1e-5)
