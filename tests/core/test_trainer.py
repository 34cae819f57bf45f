import math
from dataclasses import fields

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments, default_data_collator

from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.conftest import tiny_llama_config

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
    assert {n for n in trainable if "lora_B" in n} <= changed  # B starts at zero, must move
    assert changed <= trainable  # the frozen base never moves


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_gradient_accumulation_matches_full_batch(tmp_path, normalization):
    """Batch 8 equals 4 x accumulation 2. time_eps=1 makes t=1: every answer token masked, weight 1."""
    data = copy_task_dataset(8)
    results = []
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_model(seed=1)
        args = config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, time_eps=1.0,
                      loss_normalization=normalization)
        trainer = MDLMTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
        trainer.train()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
        assert trainer.state.log_history[-1]["train_loss"] > 0
    initial = dict(tiny_model(seed=1).named_parameters())
    for name, full in results[0].items():
        assert not torch.equal(full, initial[name].detach())
        assert torch.allclose(full, results[1][name], atol=1e-6), name


def test_plain_training_arguments_are_accepted(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    trainer = MDLMTrainer(model=tiny_model(), args=args, train_dataset=copy_task_dataset(8),
                          data_collator=default_data_collator)
    assert isinstance(trainer.args, MDLMConfig) and trainer.args.max_steps == 1
    assert trainer.args.schedule == "linear" and trainer.args.remove_unused_columns is False


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
    trainer = MDLMTrainer(model=model, args=config(tmp_path), data_collator=default_data_collator)
    trainer.args = TwoProcesses(**{k: v for k, v in vars(config(tmp_path)).items() if not k.startswith("_")
                                   and k in {f.name for f in fields(MDLMConfig) if f.init}})
    rows = copy_task_dataset(4, length=40)
    batch = default_data_collator([rows[i] for i in range(4)])
    answer = batch["labels"] != -100
    noisy, fractions = [], []
    for rank in (0, 1):
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
