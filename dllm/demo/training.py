"""The demo's training pieces: rows encoded without the chat template's cost (:class:`CharChatEncoder`), an endless
stream of training rows (:class:`TaskStream`), a wall-clock budget with the learning-rate schedule on its clock
(:class:`WallClockBudget`, :func:`on_budget_clock`, the trainers of :data:`BUDGET_CLOCK_TRAINERS`), and the progress
lines (:class:`Progress`). Used by :mod:`dllm.demo.run` and :mod:`dllm.demo.rl`."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from dllm.core.trainers import BD3LMTrainer, MDLMTrainer
from dllm.data.collator import IGNORE_INDEX, tokenize_messages
from dllm.demo.tasks import DEMO_ALPHABET, Task, iter_examples, to_messages


class CharChatEncoder:
    """``tokenize_messages`` for one user turn and one answer, for a *character* tokenizer, ~50x faster; with
    ``canvas_length`` the answer is padded with trained EOS tokens to that many tokens.

    Rendering the chat template costs about a millisecond per row, as much as a training step of the tiny
    model spends on a few rows. With one token per character the ids are a fixed template skeleton around the
    characters of the prompt and the answer, so the skeleton is read once from ``tokenize_messages`` and
    rows are checked against it until ``verify`` rows have matched.

    The EOS canvas is LLaDA's SFT recipe with a fixed length: the model learns to fill the positions after an
    answer with EOS on exactly the canvas the sampler later fills (``gen_length``), whatever the batch holds.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, canvas_length: int | None = None, verify: int = 256):
        self.tokenizer, self.canvas_length, self.verify = tokenizer, canvas_length, verify
        self.vocab = tokenizer.get_vocab()
        q, a = DEMO_ALPHABET[0], DEMO_ALPHABET[1]
        probe = tokenize_messages(tokenizer, to_messages({"prompt": q, "answer": a, "task": ""})["messages"])
        ids, labels = probe["input_ids"], probe["labels"]
        at_q, at_a = ids.index(self.vocab[q]), ids.index(self.vocab[a])
        self.prefix, self.middle, self.suffix = ids[:at_q], ids[at_q + 1:at_a], ids[at_a + 1:]
        self.suffix_labels = labels[at_a + 1:]
        if self.suffix_labels != [tokenizer.eos_token_id]:
            raise ValueError(f"expected the chat template to end an answer with one eos, got {self.suffix}")

    def __call__(self, example: dict[str, str]) -> dict[str, list[int]]:
        prompt = [self.vocab[c] for c in example["prompt"]]
        answer = [self.vocab[c] for c in example["answer"]]
        context = self.prefix + prompt + self.middle
        row = {"input_ids": context + answer + self.suffix,
               "labels": [IGNORE_INDEX] * len(context) + answer + self.suffix_labels}
        if self.verify > 0:
            self.verify -= 1
            expected = tokenize_messages(self.tokenizer, to_messages(example)["messages"])
            if row != expected:
                raise ValueError(f"CharChatEncoder disagrees with tokenize_messages on {example!r}: "
                                 f"{row} vs {expected}")
        if self.canvas_length is not None:
            extra = self.canvas_length - len(answer) - len(self.suffix)
            if extra < 0:
                raise ValueError(f"answer {example['answer']!r} does not fit a canvas of {self.canvas_length} tokens")
            eos = [self.tokenizer.eos_token_id] * extra
            row = {"input_ids": row["input_ids"] + eos, "labels": row["labels"] + eos}
        return row


class TaskStream(torch.utils.data.IterableDataset):
    """Endless fresh training rows, pre-tokenized ``{"input_ids", "labels"}`` (training prompts only)."""

    def __init__(self, tasks: list[Task], encoder: CharChatEncoder, seed: int, heldout_fraction: float):
        self.tasks, self.encoder, self.seed, self.heldout_fraction = tasks, encoder, seed, heldout_fraction

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        for example in iter_examples(self.tasks, "train", self.seed, self.heldout_fraction):
            yield self.encoder(example)


class WallClockBudget(TrainerCallback):
    """Stops training once ``seconds`` of training time have passed; ``progress()`` is the budget's clock.

    Progress is the larger of elapsed/budget and step/max_steps, so a step budget works as well.
    """

    def __init__(self, seconds: float, max_steps: int):
        self.seconds, self.max_steps = seconds, max_steps
        self.start: float | None = None
        self.paused = 0.0  # seconds spent on in-training evaluation, not charged to the budget
        self.stop: float | None = None
        self.step = 0

    def elapsed(self) -> float:
        """Training seconds so far (frozen once training ends)."""
        if self.start is None:
            return 0.0
        return (self.stop or time.time()) - self.start - self.paused

    def progress(self) -> float:
        """Share of the budget used, in [0, 1]: the larger of the time share and the step share."""
        return min(1.0, max(self.elapsed() / self.seconds, self.step / self.max_steps))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.start = time.time()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs) -> None:
        # Trainer steps the LR scheduler right after this, before it counts the step: count it here.
        self.step = state.global_step + 1

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.step = state.global_step
        if self.progress() >= 1.0:
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.stop = time.time()


def on_budget_clock(by_step: LRScheduler, budget: WallClockBudget, num_training_steps: int) -> LambdaLR:
    """Trainer's step-indexed schedule, evaluated at ``budget.progress() * num_training_steps`` instead of the
    step count.

    While the steps bind, this is the step count and the schedule is Trainer's own. When the wall-clock cap binds
    first (a slower or busy machine), Trainer's schedule would stop part-way (at half the steps, a cosine to 10%
    is still at 55% of the peak); on the budget's clock it reaches its end, so the model is annealed either way.

    Raises:
        ValueError: the schedule is not a ``LambdaLR`` (e.g. ``reduce_lr_on_plateau``), so it has no step formula.
    """
    if not isinstance(by_step, LambdaLR):
        raise ValueError(f"the demo runs the learning-rate schedule on its wall-clock budget, which needs a "
                         f"schedule with a step formula (LambdaLR); got {type(by_step).__name__}")

    def at_budget_clock(formula: Callable[[float], float]) -> Callable[[int], float]:
        return lambda _: formula(budget.progress() * num_training_steps)

    return LambdaLR(by_step.optimizer, [at_budget_clock(formula) for formula in by_step.lr_lambdas])


class BudgetClock:
    """A trainer mixin: the learning-rate schedule (``--lr_scheduler_type``, built by Trainer) runs on the
    budget's clock (:func:`on_budget_clock`): Trainer's schedules span ``max_steps`` only, and the demo stops at
    ``max_steps`` or at the wall-clock cap, whichever comes first."""

    def __init__(self, *args: Any, budget: WallClockBudget, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.budget = budget

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
                         ) -> LRScheduler:
        if self.lr_scheduler is None:
            by_step = super().create_scheduler(num_training_steps, optimizer)
            self.lr_scheduler = on_budget_clock(by_step, self.budget, num_training_steps)
        return self.lr_scheduler


class BudgetClockTrainer(BudgetClock, MDLMTrainer):
    """``MDLMTrainer`` on the budget's clock."""


class BudgetClockBD3LMTrainer(BudgetClock, BD3LMTrainer):
    """``BD3LMTrainer`` on the budget's clock."""


# One per entry of dllm.core.trainers.OBJECTIVES.
BUDGET_CLOCK_TRAINERS: dict[str, type[MDLMTrainer]] = {"mdlm": BudgetClockTrainer, "bd3lm": BudgetClockBD3LMTrainer}


class Progress(TrainerCallback):
    """One line per logging step (step, training minutes, loss, learning rate, tokens/s); optionally the
    held-out exact match every ``eval_every`` seconds of training, paused out of the budget."""

    def __init__(self, budget: WallClockBudget,
                 evaluate_fn: Callable[[PreTrainedModel], dict[str, float]] | None = None, eval_every: float = 0.0):
        self.budget, self.evaluate_fn, self.eval_every = budget, evaluate_fn, eval_every
        self.next_eval = eval_every
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, exact match per task)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs) -> None:
        if logs and "loss" in logs:
            elapsed = self.budget.elapsed()
            print(f"  step {state.global_step:5d} | {elapsed / 60:5.2f} min | loss {logs['loss']:.4f} | "
                  f"lr {logs.get('learning_rate', 0):.2e} | {state.num_input_tokens_seen / max(elapsed, 1e-9):5.0f} "
                  "tokens/s", flush=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: PreTrainedModel | None = None, **kwargs) -> None:
        if self.evaluate_fn is None or not self.eval_every or self.budget.elapsed() < self.next_eval:
            return
        self.next_eval += self.eval_every
        began = time.time()
        scores = self.evaluate_fn(model)
        model.train()
        self.budget.paused += time.time() - began
        self.history.append((state.global_step, scores))
        print(f"  step {state.global_step:5d} | held-out exact match: "
              + ", ".join(f"{name} {100 * score:.0f}%" for name, score in scores.items()), flush=True)
