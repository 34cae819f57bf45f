"""Offline post-training demo: a deliberately short SFT on the demo tasks, then GRPO (and DPO) on training
prompts, held-out exact match before and after. Nothing is downloaded. What the defaults measured, and the
settings they were chosen against: docs/demos.md, section "dllm demo-rl" (summary in the README, section
"Post-training: rewards and preferences").

    make demo-rl                                       # = dllm demo-rl
    dllm demo-rl --methods elbo diffu_grpo dpo         # both GRPO estimators and DPO, each from the same SFT model
    dllm demo-rl --help                                # every flag

Steps: train the demo's tiny model (:mod:`dllm.demo.run`: same tasks, tokenizer, model and trainer) until its
exact match on training-split prompts reaches ``--sft_target`` (50%), at most ``--sft_steps``: far below the
full demo, and about the same start on every machine, which a fixed step count is not (reused from
``OUTPUT_DIR/sft`` when a run with the same settings left it there); measure held-out exact match per task; then
for each method, starting from that SFT checkpoint, post-train on *training* prompts only (held-out prompts are
disjoint by construction) for ``--rl_minutes`` (or ``--rl_max_steps``, whichever ends first: the learning-rate
schedule runs on that clock, so it ends with the budget on a fast or a slow machine), and measure again:

* ``elbo`` / ``diffu_grpo``: :class:`~dllm.rl.grpo.DiffusionGRPOTrainer` with the exact-match reward, rollouts by
  the sampler at temperature 1, the two log-likelihood estimators of :mod:`dllm.core.policy` (diffu_grpo with
  the prompt left unmasked by default, ``--p_mask_prompt 0``);
* ``dpo``: :class:`~dllm.rl.dpo.DiffusionDPOTrainer` on pairs (chosen = the correct answer, rejected = a wrong
  answer the SFT model sampled for the same training prompt).

Prints the per-task before/after table, samples, writes ``reward_curve.png`` (training reward per step of each
GRPO run, DPO's implicit-reward accuracy) and ends with ``held-out exact match: A% -> B% in S s`` for the last
method run (S: its post-training seconds).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import DiffusionGenerationConfig, generate_text
from dllm.demo.run import (
    DemoArguments,
    DemoTasks,
    DemoTrainingConfig,
    WallClockBudget,
    build_tasks,
    build_tokenizer_and_model,
    evaluate,
    report,
    require_matplotlib,
    train,
)
from dllm.demo.tasks import make_examples
from dllm.demo.training import BudgetClock
from dllm.errors import UsageError
from dllm.options import OptionParser
from dllm.rl.dpo import DiffusionDPOConfig, DiffusionDPOTrainer
from dllm.rl.grpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
from dllm.rl.rewards import exact_match

METHODS = ("elbo", "diffu_grpo", "dpo")
# Without --rl_max_steps the minutes bind (a step takes 0.1-0.4 s here); Trainer still needs a step count.
UNCAPPED_STEPS = 1_000_000
SFT_CHECK_EVERY, SFT_CHECK_PROMPTS = 50, 100  # --sft_target: checked every 50 steps on 100 prompts per task


@dataclass
class RLDemoArguments:
    """The short SFT and the post-training runs (the model and tasks are dllm demo's flags)."""

    sft_steps: int = field(
        default=2500, metadata={"help": "At most this many SFT steps before post-training (the full demo: 8000)."}
    )
    sft_target: float = field(
        default=0.5, metadata={"help": "Stop the SFT once its exact match on training-split prompts (100 per task, "
                               "none held out) reaches this share, checked every 50 steps; 0: all --sft_steps. A "
                               "step count alone is no fixed start: the tasks are learnt in a steep phase that "
                               "floating-point differences shift (2500 steps gave 45%% held-out on one machine, "
                               "77.5%% on another)."}
    )
    methods: list[str] = field(
        default_factory=lambda: ["elbo"],
        metadata={"help": f"Post-training runs, each from the same SFT checkpoint: {', '.join(METHODS)}."},
    )
    rl_minutes: float = field(default=10.0, metadata={"help": "Wall-clock cap of each post-training run."})
    rl_max_steps: int | None = field(
        default=None, metadata={"help": "Step cap of each post-training run (default: none, --rl_minutes binds). "
                                "The learning-rate schedule runs on the budget's clock: it ends when the cap or "
                                "the minutes run out, whichever comes first, on any machine."}
    )
    rl_learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak AdamW learning rate of post-training (docs/demos.md: the rates "
                                "measured)."}
    )
    rl_lr_scheduler: str = field(
        default="linear", metadata={"help": "Learning-rate schedule of post-training over its budget (the "
                                    "minutes, or --rl_max_steps if it ends first), after the warm-up (linear: to 0 "
                                    "at the end; constant_with_warmup drifted down late, docs/demos.md).",
                                    "choices": ["constant_with_warmup", "linear", "cosine"]}
    )
    num_generations: int = field(default=8, metadata={"help": "GRPO: completions per prompt."})
    prompts_per_step: int = field(default=8, metadata={"help": "GRPO: prompts per step (x num_generations)."})
    beta: float = field(default=0.0, metadata={"help": "GRPO: KL coefficient (0: no reference model)."})
    num_iterations: int = field(default=1, metadata={"help": "GRPO: optimisation passes over each rollout batch."})
    epsilon: float = field(default=0.2, metadata={"help": "GRPO: clip range of the ratio."})
    temperature: float = field(default=1.0, metadata={"help": "GRPO: rollout sampling temperature."})
    scale_rewards: bool = field(
        default=True, metadata={"help": "GRPO: divide advantages by the group's reward std (False: Dr. GRPO)."}
    )
    p_mask_prompt: float = field(
        default=0.0, metadata={"help": "diffu_grpo: probability of masking a prompt token (d1's 0.3 lowered held-out "
                               "exact match here: with one pass per rollout it only hides the question)."}
    )
    loss_tokens: str = field(
        default="canvas", metadata={"help": "diffu_grpo: the token losses averaged, 'canvas' or d1's 'first_eos'.",
                                    "choices": ["canvas", "first_eos"]}
    )
    rl_warmup_steps: float = field(
        default=0, metadata={"help": "Linear learning-rate warm-up of post-training: a share of the budget if below "
                             "1 (0.05: the first 5%% of the minutes or steps), else steps (these need --rl_max_steps: "
                             "without it the schedule runs on the minutes)."}
    )
    num_elbo_samples: int = field(default=2, metadata={"help": "ELBO draws per completion (elbo and dpo)."})
    elbo_estimator: str = field(
        default="count", metadata={"help": "'count' (LLaDA: l of the n canvas tokens masked, weight n/l <= n) or "
                                   "'time' (t ~ U[eps, 1], weight 1/t: up to 1/eps on a single draw).", "choices": ["count", "time"]}
    )
    num_train_prompts: int = field(
        default=4000, metadata={"help": "Training prompts per task for post-training (DPO's pairs come from them: "
                                "4000 gave ~10k pairs, fewer than 3 passes over them in 1200 steps)."}
    )
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO: beta."})
    dpo_pairs_per_step: int = field(default=32, metadata={"help": "DPO: preference pairs per step."})
    rpo_alpha: float = field(
        default=1.0, metadata={"help": "DPO: weight of RPO's SFT term on the chosen answer (0: plain DPO, which "
                               "lowered held-out exact match here: docs/demos.md)."}
    )
    output_dir: str = field(default="outputs/demo-rl", metadata={"help": "SFT checkpoint, runs and the curve."})
    seed: int = field(default=42, metadata={"help": "Seed of the SFT and of every run."})

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"--methods {' '.join(unknown)}: choose among {', '.join(METHODS)}")
        if self.rl_max_steps is not None and self.rl_max_steps < 1:
            raise UsageError(f"--rl_max_steps {self.rl_max_steps}: give at least 1 step")
        if self.rl_warmup_steps >= 1 and self.rl_max_steps is None:
            raise UsageError(f"--rl_warmup_steps {self.rl_warmup_steps:g}: a warm-up in steps needs --rl_max_steps "
                             "(without it the schedule runs on --rl_minutes: give a share below 1)")
        if not 0.0 <= self.sft_target <= 1.0:
            raise UsageError(f"--sft_target {self.sft_target}: give a share of prompts in [0, 1]")

    def max_steps(self) -> int:
        """The step cap of every post-training run (``--rl_max_steps``, else one no run reaches in minutes)."""
        return self.rl_max_steps or UNCAPPED_STEPS


@dataclass
class Score:
    """Held-out exact match per task, and overall."""

    per_task: dict[str, float]
    overall: float


def held_out_score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, demo: DemoTasks,
                   batch_size: int) -> tuple[Score, list[str]]:
    """Exact match on the held-out prompts, one token committed per step (the demo's sampler)."""
    answers, per_task = evaluate(model, tokenizer, demo.heldout, demo.gen_length, batch_size)
    overall = sum(a == e["answer"] for a, e in zip(answers, demo.heldout)) / len(demo.heldout)
    return Score(per_task, overall), answers


class StopAtExactMatch(TrainerCallback):
    """Every ``every`` steps, exact match on ``rows`` (training-split prompts); stops training once it reaches
    ``target``. The evaluation is paused out of ``budget`` (the learning-rate clock)."""

    def __init__(self, budget: WallClockBudget, rows: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                 demo: DemoTasks, target: float, every: int, batch_size: int):
        self.budget, self.rows, self.tokenizer, self.demo = budget, rows, tokenizer, demo
        self.target, self.every, self.batch_size = target, every, batch_size
        self.reached: tuple[int, float] | None = None  # (step, exact match) when the target was met

    def on_step_end(self, args: Any, state: Any, control: Any, model: PreTrainedModel | None = None,
                    **kwargs) -> None:
        if state.global_step % self.every:
            return
        began = time.time()
        answers, _ = evaluate(model, self.tokenizer, self.rows, self.demo.gen_length, self.batch_size)
        model.train()
        self.budget.paused += time.time() - began
        score = sum(a == r["answer"] for a, r in zip(answers, self.rows)) / len(self.rows)
        if score >= self.target:
            self.reached = (state.global_step, score)
            control.should_training_stop = True


def short_sft(demo_args: DemoArguments, args: RLDemoArguments, demo: DemoTasks, folder: Path) -> int:
    """Train the demo model into ``folder`` for ``sft_steps``, or until ``sft_target`` exact match on
    training-split prompts; kept (a later run with the same settings reuses it). Returns its steps."""
    marker = folder / "demo_rl_sft.json"
    shown_only = ("plot", "threads", "num_eval_per_task", "num_samples_to_show", "eval_batch_size")
    settings = {"sft_steps": args.sft_steps, "sft_target": args.sft_target, "seed": args.seed,
                "demo": {k: v for k, v in asdict(demo_args).items() if k not in shown_only}}
    saved = json.loads(marker.read_text()) if marker.is_file() else {}
    if saved.get("settings") == settings:
        print(f"reusing the SFT checkpoint in {folder} ({saved['steps']} steps)", flush=True)
        return saved["steps"]
    tokenizer, model = build_tokenizer_and_model(demo_args)
    train_args = DemoTrainingConfig(output_dir=str(folder), max_steps=args.sft_steps, seed=args.seed,
                                    report_to="none", logging_steps=50)
    check_rows = training_rows(demo, args, 3, SFT_CHECK_PROMPTS)  # GRPO's prompts: offset 1, DPO's: 2
    stops: list[StopAtExactMatch] = []  # built by train() around its budget, which the checks pause

    def stop_at_target(budget: WallClockBudget) -> list[TrainerCallback]:
        stops.append(StopAtExactMatch(budget, check_rows, tokenizer, demo, args.sft_target, SFT_CHECK_EVERY,
                                      demo_args.eval_batch_size))
        return stops

    if args.sft_target > 0:
        print(f"SFT until {100 * args.sft_target:g}% exact match on {len(check_rows)} training prompts (checked "
              f"every {SFT_CHECK_EVERY} steps), at most {args.sft_steps} steps", flush=True)
    trainer, _ = train(replace(demo_args, eval_every_minutes=0.0), train_args, demo, tokenizer, model,
                       more_callbacks=stop_at_target if args.sft_target > 0 else None)
    if stops and stops[0].reached:
        step, score = stops[0].reached
        print(f"SFT stopped at step {step}: {100 * score:.1f}% exact match on the training prompts checked",
              flush=True)
    elif stops:
        print(f"SFT did not reach {100 * args.sft_target:g}% in {trainer.state.global_step} steps", flush=True)
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    DiffusionGenerationConfig(gen_length=demo.gen_length).save_pretrained(folder)
    steps = trainer.state.global_step
    marker.write_text(json.dumps({"settings": settings, "steps": steps}))
    return steps


class PrintEvery(TrainerCallback):
    """One line every ``every`` steps with the run's own metric (reward, or DPO's accuracy), averaged over them."""

    def __init__(self, name: str, key: str, every: int = 25):
        self.name, self.key, self.every, self.start = name, key, every, time.time()
        self.values: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs) -> None:
        if logs and self.key in logs:
            self.values.append(logs[self.key])
        if self.values and state.global_step % self.every == 0:
            print(f"  {self.name} step {state.global_step:4d} | {time.time() - self.start:5.0f} s | "
                  f"{self.key} {sum(self.values) / len(self.values):.3f} (mean of the last {len(self.values)} "
                  f"steps)", flush=True)
            self.values = []


def training_rows(demo: DemoTasks, args: RLDemoArguments, seed_offset: int,
                  per_task: int | None = None) -> list[dict[str, str]]:
    """``per_task`` (default ``num_train_prompts``) training prompts per task (never a held-out one) with their
    answers; each use has its own ``seed_offset``."""
    return make_examples(demo.tasks, per_task or args.num_train_prompts, "train", seed=args.seed + seed_offset,
                         heldout_fraction=demo.heldout_fraction)


def limits(args: RLDemoArguments) -> str:
    """The budget of a post-training run, in words."""
    minutes = f"{args.rl_minutes:g} min"
    return f"at most {args.rl_max_steps} steps or {minutes}" if args.rl_max_steps else minutes


def trainer_values(args: RLDemoArguments, method: str) -> dict[str, Any]:
    """The TrainingArguments every post-training run shares (CPU, the learning-rate schedule, log every
    step)."""
    return dict(output_dir=str(Path(args.output_dir) / method), max_steps=args.max_steps(),
                learning_rate=args.rl_learning_rate,
                lr_scheduler_type=args.rl_lr_scheduler, warmup_steps=args.rl_warmup_steps, weight_decay=0.0,
                max_grad_norm=1.0, use_cpu=True, report_to="none",
                logging_steps=1, save_strategy="no", disable_tqdm=True, seed=args.seed, num_elbo_samples=args.num_elbo_samples,
                elbo_estimator=args.elbo_estimator)


class BudgetClockGRPOTrainer(BudgetClock, DiffusionGRPOTrainer):
    """GRPO with its learning-rate schedule on the budget's clock (it ends with the minutes or the step cap)."""


class BudgetClockDPOTrainer(BudgetClock, DiffusionDPOTrainer):
    """DPO with its learning-rate schedule on the budget's clock."""


def quiet(trainer: Any) -> Any:
    for callback in (PrinterCallback, ProgressCallback):  # the demo prints its own lines
        trainer.remove_callback(callback)
    return trainer


def run_grpo(method: str, args: RLDemoArguments, demo: DemoTasks, sft: Path) -> tuple[Any, float]:
    """GRPO with the exact-match reward from the SFT checkpoint; returns the trainer and its seconds."""
    model, tokenizer = AutoModelForMaskedDiffusion.from_pretrained(sft), AutoTokenizer.from_pretrained(sft)
    config = DiffusionGRPOConfig(**trainer_values(args, method), loss_type=method,
                                 num_generations=args.num_generations, beta=args.beta, temperature=args.temperature,
                                 num_iterations=args.num_iterations, epsilon=args.epsilon,
                                 scale_rewards=args.scale_rewards, p_mask_prompt=args.p_mask_prompt,
                                 loss_tokens=args.loss_tokens,
                                 per_device_train_batch_size=args.num_generations * args.prompts_per_step)
    budget = WallClockBudget(args.rl_minutes * 60, args.max_steps())
    trainer = quiet(BudgetClockGRPOTrainer(
        model, [exact_match], config, Dataset.from_list(training_rows(demo, args, 1)), tokenizer,
        generation_config=DiffusionGenerationConfig(gen_length=demo.gen_length), budget=budget,
        callbacks=[budget, PrintEvery(method, "reward")]))
    print(f"\nGRPO ({method}): {args.prompts_per_step} prompts x {args.num_generations} completions per step, "
          f"for {limits(args)} ...", flush=True)
    trainer.train()
    return trainer, budget.elapsed()


def preference_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, demo: DemoTasks,
                     args: RLDemoArguments, draws: int = 4) -> list[dict[str, str]]:
    """(prompt, chosen = the correct answer, rejected = a wrong answer the model sampled at temperature 1) for
    the training prompts on which one of ``draws`` samples was wrong (and ended within the canvas)."""
    rows = training_rows(demo, args, 2)
    config = DiffusionGenerationConfig(gen_length=demo.gen_length, temperature=1.0)
    generator = torch.Generator().manual_seed(args.seed)
    rejected: dict[int, str] = {}
    model.eval()
    for _ in range(draws):
        todo = [i for i in range(len(rows)) if i not in rejected]
        answers = generate_text(model, tokenizer, [rows[i]["prompt"] for i in todo], config, generator=generator)
        # An answer that filled the whole canvas (no EOS) has no EOS-padded form on that canvas: skipped.
        rejected.update({i: a for i, a in zip(todo, answers)
                         if a != rows[i]["answer"] and len(tokenizer(a, add_special_tokens=False)["input_ids"])
                         < demo.gen_length})
    return [{"prompt": rows[i]["prompt"], "chosen": rows[i]["answer"], "rejected": a, "task": rows[i]["task"]}
            for i, a in sorted(rejected.items())]


def run_dpo(args: RLDemoArguments, demo: DemoTasks, sft: Path) -> tuple[Any, float]:
    """DPO on the SFT model's own mistakes; returns the trainer and its seconds (sampling the pairs included)."""
    began = time.time()
    model, tokenizer = AutoModelForMaskedDiffusion.from_pretrained(sft), AutoTokenizer.from_pretrained(sft)
    pairs = preference_pairs(model, tokenizer, demo, args)
    print(f"\nDPO: {len(pairs)} pairs (a wrong sampled answer against the correct one), {args.dpo_pairs_per_step} "
          f"per step, for {limits(args)} ...", flush=True)
    config = DiffusionDPOConfig(**trainer_values(args, "dpo"), beta=args.dpo_beta,
                                per_device_train_batch_size=args.dpo_pairs_per_step, rpo_alpha=args.rpo_alpha or None,
                                max_completion_length=demo.gen_length)
    budget = WallClockBudget(args.rl_minutes * 60 - (time.time() - began), args.max_steps())
    trainer = quiet(BudgetClockDPOTrainer(model, config, Dataset.from_list(pairs), tokenizer, budget=budget,
                                          callbacks=[budget, PrintEvery("dpo", "rewards/accuracies")]))
    trainer.train()
    return trainer, time.time() - began


def plot_runs(histories: dict[str, list[dict]], path: Path) -> None:
    """Training reward per step of each GRPO run (moving average of 10), and DPO's implicit-reward accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        key = "rewards/accuracies" if name == "dpo" else "reward"
        points = [(h["step"], h[key]) for h in history if key in h]
        values = [v for _, v in points]
        smooth = [sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]) for i in range(len(values))]
        label = "dpo: implicit-reward accuracy" if name == "dpo" else f"grpo {name}: exact-match reward"
        ax.plot([s for s, _ in points], smooth, label=label)
    ax.set_xlabel("post-training step")
    ax.set_ylabel("training prompts (moving average of 10 steps)")
    ax.set_ylim(0, 1)
    ax.set_title("dllm demo-rl: reward on training prompts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(demo: DemoTasks, rows: list[tuple[str, Score, int, float]]) -> None:
    names = [task.name for task in demo.tasks]
    print(f"\nheld-out exact match ({len(demo.heldout)} prompts, none seen in SFT or post-training):")
    print("  " + f"{'model':24s}" + "".join(f"{n:>9s}" for n in names) + f"{'overall':>9s}{'steps':>7s}{'seconds':>9s}")
    for label, score, steps, seconds in rows:
        cells = "".join(f"{100 * score.per_task[n]:8.1f}%" for n in names)
        print(f"  {label:24s}{cells}{100 * score.overall:8.1f}%{steps:7d}{seconds:9.0f}")


def parse(argv: list[str] | None) -> tuple[DemoArguments, RLDemoArguments]:
    """The flags, and the set-up every step shares (as dllm demo's: offline hub, threads, seed)."""
    import os

    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    demo_args, args = OptionParser((DemoArguments, RLDemoArguments), prog="dllm demo-rl").parse(argv)  # --config too
    require_matplotlib(demo_args.plot)
    if demo_args.threads:
        torch.set_num_threads(demo_args.threads)
    set_seed(args.seed)
    return demo_args, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the held-out exact match before and after each method."""
    demo_args, args = parse(argv)
    out = Path(args.output_dir)
    demo = build_tasks(demo_args, args.seed)
    sft_steps = short_sft(demo_args, args, demo, out / "sft")
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    before, _ = held_out_score(AutoModelForMaskedDiffusion.from_pretrained(out / "sft"), tokenizer, demo,
                               demo_args.eval_batch_size)
    print(f"SFT model, held-out exact match {100 * before.overall:.1f}% ("
          + ", ".join(f"{name} {100 * value:.1f}%" for name, value in before.per_task.items()) + ")", flush=True)
    table, histories, results = [(f"sft ({sft_steps} steps)", before, 0, 0.0)], {}, {}
    for method in args.methods:
        trainer, seconds = run_dpo(args, demo, out / "sft") if method == "dpo" else run_grpo(method, args, demo,
                                                                                            out / "sft")
        after, answers = held_out_score(trainer.model, tokenizer, demo, demo_args.eval_batch_size)
        report(demo.tasks, demo.heldout, answers, demo_args.num_samples_to_show)
        table.append((f"+ {'grpo ' if method != 'dpo' else ''}{method}", after, trainer.state.global_step, seconds))
        histories[method] = trainer.state.log_history
        results[method] = {"before": before.overall, "after": after.overall, "seconds": seconds,
                           "steps": trainer.state.global_step, "per_task": after.per_task}
    print_table(demo, table)
    if demo_args.plot:
        plot_runs(histories, out / "reward_curve.png")
        print(f"saved {out / 'reward_curve.png'}")
    last = results[args.methods[-1]]
    print(f"held-out exact match: {100 * last['before']:.1f}% -> {100 * last['after']:.1f}% in "
          f"{last['seconds']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
