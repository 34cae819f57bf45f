"""Offline post-training demo: a deliberately short SFT on the demo tasks, then GRPO (and DPO) on training
prompts, held-out exact match before and after. Nothing is downloaded. What the defaults measured, and the
settings they were chosen against: docs/demos.md, section "dllm demo-rl" (summary in the README, section
"Post-training: rewards and preferences").

    make demo-rl                                       # = dllm demo-rl
    dllm demo-rl --methods elbo diffu_grpo dpo         # both GRPO estimators and DPO, each from the same SFT model
    dllm demo-rl --help                                # every flag

Steps: train the demo's tiny model (:mod:`dllm.demo.run`: same tasks, tokenizer, model and trainer) for
``--sft_steps`` steps only, far below the full demo (reused from ``OUTPUT_DIR/sft`` when a run with the same
settings left it there); measure held-out exact match per task; then for each method, starting from that SFT
checkpoint, post-train on *training* prompts only (held-out prompts are disjoint by construction) for at most
``--rl_minutes`` and ``--rl_max_steps`` (by default per method: as many steps as fit in 10 minutes), and measure
again:

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
from dllm.errors import UsageError
from dllm.options import OptionParser
from dllm.rl.dpo import DiffusionDPOConfig, DiffusionDPOTrainer
from dllm.rl.grpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
from dllm.rl.rewards import exact_match

METHODS = ("elbo", "diffu_grpo", "dpo")
# Steps per method by default: diffu_grpo's step (one forward) costs about 0.27 s against elbo's 0.43 (two ELBO
# draws) on one core, so the same 10 minutes hold 2000 of its steps (docs/demos.md, "dllm demo-rl").
DEFAULT_STEPS = {"elbo": 1200, "diffu_grpo": 2000, "dpo": 1200}


@dataclass
class RLDemoArguments:
    """The short SFT and the post-training runs (the model and tasks are dllm demo's flags)."""

    sft_steps: int = field(
        default=2500, metadata={"help": "SFT steps before post-training (the full demo: 8000). Short on purpose, "
                                "yet every task must earn some exact-match reward (README: 2500 gave 45%% held-out)."}
    )
    methods: list[str] = field(
        default_factory=lambda: ["elbo"],
        metadata={"help": f"Post-training runs, each from the same SFT checkpoint: {', '.join(METHODS)}."},
    )
    rl_minutes: float = field(default=10.0, metadata={"help": "Wall-clock cap of each post-training run."})
    rl_max_steps: int | None = field(
        default=None, metadata={"help": "Step cap of each post-training run, over which the learning rate decays "
                                "(default: per method, what fits in --rl_minutes on a 2-core CPU: "
                                + ", ".join(f"{m} {n}" for m, n in DEFAULT_STEPS.items()) + "; docs/demos.md)."}
    )
    rl_learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak AdamW learning rate of post-training (docs/demos.md: the rates "
                                "measured)."}
    )
    rl_lr_scheduler: str = field(
        default="linear", metadata={"help": "Learning-rate schedule of post-training over --rl_max_steps, after "
                                    "the warm-up (linear: to 0 at the last step; constant_with_warmup drifted "
                                    "down late, docs/demos.md).",
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
    rl_warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps of post-training."})
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

    def max_steps(self, method: str) -> int:
        """The step cap of ``method``'s run (``--rl_max_steps``, else its default)."""
        return self.rl_max_steps or DEFAULT_STEPS[method]


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


def short_sft(demo_args: DemoArguments, args: RLDemoArguments, demo: DemoTasks, folder: Path) -> None:
    """Train the demo model for ``sft_steps`` into ``folder`` (kept: a later run with the same settings reuses it)."""
    marker = folder / "demo_rl_sft.json"
    shown_only = ("plot", "threads", "num_eval_per_task", "num_samples_to_show", "eval_batch_size")
    settings = {"sft_steps": args.sft_steps, "seed": args.seed,
                "demo": {k: v for k, v in asdict(demo_args).items() if k not in shown_only}}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"reusing the SFT checkpoint in {folder} ({args.sft_steps} steps)", flush=True)
        return
    tokenizer, model = build_tokenizer_and_model(demo_args)
    train_args = DemoTrainingConfig(output_dir=str(folder), max_steps=args.sft_steps, seed=args.seed,
                                    report_to="none", logging_steps=50)
    trainer, _ = train(replace(demo_args, eval_every_minutes=0.0), train_args, demo, tokenizer, model)
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    DiffusionGenerationConfig(gen_length=demo.gen_length).save_pretrained(folder)
    marker.write_text(json.dumps(settings))


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


def training_rows(demo: DemoTasks, args: RLDemoArguments, seed_offset: int) -> list[dict[str, str]]:
    """``num_train_prompts`` training prompts per task (never a held-out one) with their answers."""
    return make_examples(demo.tasks, args.num_train_prompts, "train", seed=args.seed + seed_offset)


def trainer_values(args: RLDemoArguments, method: str) -> dict[str, Any]:
    """The TrainingArguments every post-training run shares (CPU, the learning-rate schedule over the method's
    step cap, log every step)."""
    return dict(output_dir=str(Path(args.output_dir) / method), max_steps=args.max_steps(method),
                learning_rate=args.rl_learning_rate,
                lr_scheduler_type=args.rl_lr_scheduler, warmup_steps=args.rl_warmup_steps, weight_decay=0.0,
                max_grad_norm=1.0, use_cpu=True, report_to="none",
                logging_steps=1, save_strategy="no", disable_tqdm=True, seed=args.seed, num_elbo_samples=args.num_elbo_samples,
                elbo_estimator=args.elbo_estimator)


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
    budget = WallClockBudget(args.rl_minutes * 60, args.max_steps(method))
    trainer = quiet(DiffusionGRPOTrainer(model, [exact_match], config, Dataset.from_list(training_rows(demo, args, 1)),
                                         tokenizer, generation_config=DiffusionGenerationConfig(gen_length=demo.gen_length),
                                         callbacks=[budget, PrintEvery(method, "reward")]))
    print(f"\nGRPO ({method}): {args.prompts_per_step} prompts x {args.num_generations} completions per step, "
          f"at most {args.max_steps(method)} steps or {args.rl_minutes:g} min ...", flush=True)
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
          f"per step, at most {args.max_steps('dpo')} steps or {args.rl_minutes:g} min ...", flush=True)
    config = DiffusionDPOConfig(**trainer_values(args, "dpo"), beta=args.dpo_beta,
                                per_device_train_batch_size=args.dpo_pairs_per_step, rpo_alpha=args.rpo_alpha or None,
                                max_completion_length=demo.gen_length)
    budget = WallClockBudget(args.rl_minutes * 60 - (time.time() - began), args.max_steps("dpo"))
    trainer = quiet(DiffusionDPOTrainer(model, config, Dataset.from_list(pairs), tokenizer,
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
    short_sft(demo_args, args, demo, out / "sft")
    tokenizer = AutoTokenizer.from_pretrained(out / "sft")
    before, _ = held_out_score(AutoModelForMaskedDiffusion.from_pretrained(out / "sft"), tokenizer, demo,
                               demo_args.eval_batch_size)
    print(f"SFT model, held-out exact match {100 * before.overall:.1f}% ("
          + ", ".join(f"{name} {100 * value:.1f}%" for name, value in before.per_task.items()) + ")", flush=True)
    table, histories, results = [(f"sft ({args.sft_steps} steps)", before, 0, 0.0)], {}, {}
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
