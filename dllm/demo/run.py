"""Offline demo: train a tiny bidirectional LLaMA 3 from scratch as a masked diffusion LM, then answer
held-out prompts by iterative denoising. Nothing is downloaded.

    make demo                                   # = dllm demo = python -m dllm.demo
    python -m dllm.demo --train_minutes 3       # shorter run
    python -m dllm.demo --help                  # every flag (demo options + MDLMConfig/TrainingArguments)

Steps: build a character tokenizer and a random-init LLaMA 3 masked LM through
``dllm.auto.AutoModelForMaskedDiffusion`` (saved and reloaded through ``from_pretrained``); stream synthetic
instruction tasks (:mod:`dllm.demo.tasks`); train with the same ``MDLMTrainer`` + ``SFTDataCollator`` path as
``examples/llama3/sft.py`` for 8000 steps or 8 minutes, whichever comes first; reload the saved checkpoint and
answer prompts held out from training (disjoint by construction) with the low-confidence sampler
(:mod:`dllm.core.generation`), one token per step; print exact match per task and overall, a few samples, and
plot the loss and the held-out exact match (matplotlib, checked at start; ``--no_plot`` runs without it).

Why each default is what it is (the measurements behind them): ``docs/demos.md``. The training pieces (the
character chat encoder, the task stream, the wall-clock budget and its learning-rate clock) are in
:mod:`dllm.demo.training`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SchedulerType,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.training_args import OptimizerNames
from transformers.utils import logging as hf_logging

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import DiffusionGenerationConfig, generate_text_output, generation_defaults
from dllm.core.trainers import BD3LMConfig, MDLMTrainer
from dllm.data.collator import SFTDataCollator
from dllm.demo.tasks import (
    DEMO_ALPHABET,
    AddNumbers,
    ReverseWord,
    SortDigits,
    Task,
    make_examples,
)
from dllm.demo.tokenizer import build_char_tokenizer
from dllm.errors import UsageError
from dllm.options import OptionParser
from dllm.demo.training import (  # noqa: F401  (WallClockBudget, CharChatEncoder, on_budget_clock: re-exported)
    BUDGET_CLOCK_TRAINERS,
    CharChatEncoder,
    Progress,
    TaskStream,
    WallClockBudget,
    on_budget_clock,
)

logger = logging.getLogger(__name__)


def process_start_time() -> float:
    """When this Python process started (Linux ``/proc``), so the reported time includes interpreter start-up
    and imports; elsewhere, when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5); starttime is field 22
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + int(after_name[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


@dataclass
class DemoArguments:
    """What the demo trains on, for how long, and how it is evaluated."""

    train_minutes: float | None = field(
        default=None, metadata={"help": "Wall-clock cap on training in minutes (default: 8 for mdlm, 16 for bd3lm, "
                                "whose step costs about 1.6x: 8000 steps took 11.5 min on a loaded 2-core machine). "
                                "Training stops at --max_steps or at this cap, whichever comes first; the "
                                "learning-rate schedule spans the one that binds."}
    )
    threads: int = field(
        default=1, metadata={"help": "torch CPU threads (0: torch's default, one per core). One is the default: "
                             "the tiny model's matmuls gain little from a second thread, and a second thread "
                             "thrashes when anything else runs on the machine (20-40x slower, measured)."}
    )
    objective: Literal["mdlm", "bd3lm"] = field(
        default="mdlm", metadata={"help": "'mdlm': one bidirectional block over the answer canvas; 'bd3lm': block "
                                  "diffusion (--block_size), decoded block by block with the exact block cache."}
    )
    model_type: Literal["llama", "bert"] = field(
        default="llama", metadata={"help": "'llama': a LLaMA 3 block stack made bidirectional; 'bert': a BERT encoder "
                                   "(BertForMaskedLM: learned absolute positions, post-LayerNorm, GELU), the "
                                   "encoder path of AutoModelForMaskedDiffusion. Same sizes; --rope_theta is LLaMA's."}
    )
    plot: bool = field(
        default=True, metadata={"help": "Draw loss.png (needs matplotlib: pip install 'dllm[plot]'; checked at "
                                "start); --no_plot runs without it."}
    )
    # Model shape: a LLaMA 3 block stack, tiny.
    hidden_size: int = field(default=64, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(
        default=2, metadata={"help": "Attention heads (also key/value heads); 2 heads of 32 dims carry more rotary "
                             "frequencies each than 4 of 16, which the position-indexing tasks need."}
    )
    intermediate_size: int = field(default=256, metadata={"help": "SwiGLU width."})
    rope_theta: float = field(
        default=100.0, metadata={"help": "RoPE base; sequences here are under 30 tokens, so a small base spreads "
                                "the rotary frequencies over the positions that occur."}
    )
    # Tasks.
    sort_max_digits: int = field(default=6, metadata={"help": "sort: 3..N digits."})
    reverse_max_letters: int = field(default=6, metadata={"help": "reverse: 3..N letters."})
    add_min_digits: int = field(default=2, metadata={"help": "add: operands of at least N digits."})
    add_max_digits: int = field(default=2, metadata={"help": "add: operands of at most N digits."})
    add_lsd_first: bool = field(default=True, metadata={"help": "add: write the sum least-significant digit first."})
    add_pad_answer: bool = field(default=False, metadata={"help": "add: zero-pad the sum to a fixed width."})
    add_share: int = field(
        default=1, metadata={"help": "add gets this many training rows per row of each other task (it is the "
                             "slowest to learn)."}
    )
    heldout_fraction: float = field(
        default=0.1, metadata={"help": "Share of each task's prompt space reserved for evaluation (by prompt hash)."}
    )
    # Evaluation.
    num_eval_per_task: int = field(default=200, metadata={"help": "Held-out prompts per task."})
    num_samples_to_show: int = field(default=3, metadata={"help": "Samples printed per task."})
    eval_batch_size: int = field(default=256, metadata={"help": "Prompts denoised together."})
    eval_every_minutes: float = field(
        default=1.0, metadata={"help": "Also report held-out exact match (50 prompts per task) during training "
                               "every N minutes (0: only at the end); that time is not charged to the budget."}
    )

    def __post_init__(self) -> None:
        if self.train_minutes is None:
            self.train_minutes = DEFAULT_TRAIN_MINUTES[self.objective]


# The wall-clock cap per objective: what each needed for >= 98% held-out exact match on the 2-core development
# machine (docs/demos.md; a bd3lm step costs about 1.6x an mdlm one).
DEFAULT_TRAIN_MINUTES = {"mdlm": 8.0, "bd3lm": 16.0}


@dataclass
class DemoTrainingConfig(BD3LMConfig):
    """The trainers' config with the demo's defaults (tiny model from scratch, CPU, wall-clock budget);
    ``block_size`` is read with ``--objective bd3lm`` only."""

    block_size: int = field(
        default=8, metadata={"help": "With --objective bd3lm: positions per block (counted from the sequence start). "
                             "8 learned faster than 4 here (34.5%% vs 21.8%% held-out exact match at 2000 steps, "
                             "docs/demos.md)."}
    )
    output_dir: str = field(default="outputs/demo", metadata={"help": "Checkpoint, tokenizer and loss.png go here."})
    use_cpu: bool = field(default=True, metadata={"help": "Train on CPU (the demo is sized for 2 cores)."})
    max_steps: int = field(
        default=8000, metadata={"help": "Optimizer steps (about 3.5 min on one free CPU core, measured; "
                                "--train_minutes caps the time on slower machines)."}
    )
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Sequences per step: small batches give more updates per second, which "
                              "is what these tasks need."}
    )
    optim: OptimizerNames | str = field(
        default="adamw_torch_fused", metadata={"help": "Trainer's optimizer name; fused AdamW runs one kernel "
                                               "per parameter group."}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine_with_min_lr", metadata={"help": "Trainer's learning-rate schedule, run on the budget's "
                                                "clock (it completes when --train_minutes binds first). Any "
                                                "schedule transformers builds as a LambdaLR."}
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"min_lr_rate": 0.1},
        metadata={"help": "Schedule options as JSON; the cosine decays to min_lr_rate x the peak."},
    )
    warmup_steps: float = field(default=0.03, metadata={"help": "Warm-up share of the budget (< 1) or steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Only the final model is saved."})
    disable_tqdm: bool = field(default=True, metadata={"help": "Progress is printed by the demo."})
    time_eps: float = field(
        default=0.5, metadata={"help": "t ~ U[time_eps, 1]: at least half of each answer is masked. The answers are "
                               "functions of the prompt, so heavily masked canvases teach the rule fastest."}
    )
    loss_weighting: Literal["elbo", "uniform"] = field(
        default="uniform", metadata={"help": "'uniform' masked CE (learns these tasks several times faster here "
                                     "than the 1/t ELBO weight) or 'elbo'."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Batches are built in the main process."})
    include_num_input_tokens_seen: str | bool = field(default=True, metadata={"help": "Count tokens (for tokens/s)."})


def demo_config(args: DemoArguments, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The tiny model's config: LLaMA 3 (RoPE base ``rope_theta``) or, with ``--model_type bert``, a BERT encoder of
    the same sizes (no dropout, as the LLaMA one has none); tied embeddings, 128 positions, the tokenizer's ids."""
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, mask_token_id=tokenizer.mask_token_id)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                 num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                 max_position_embeddings=128, tie_word_embeddings=True)
    if args.model_type == "bert":
        return BertConfig(**sizes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **ids)
    return LlamaConfig(**sizes, num_key_value_heads=args.num_attention_heads,
                       rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta}, **ids)


def build_tokenizer_and_model(args: DemoArguments) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Character tokenizer + random-init masked LM (LLaMA 3, or BERT with ``--model_type bert``), saved and
    reloaded through ``from_pretrained``."""
    tokenizer = build_char_tokenizer(DEMO_ALPHABET)
    config = demo_config(args, tokenizer)
    with tempfile.TemporaryDirectory() as init_dir:
        AutoModelForMaskedDiffusion.from_config(config).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
        # The loading path of a real checkpoint: config.json carries is_causal=false.
        return AutoTokenizer.from_pretrained(init_dir), AutoModelForMaskedDiffusion.from_pretrained(init_dir)


def answer_prompts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[dict],
                   config: DiffusionGenerationConfig, batch_size: int) -> tuple[list[str], int]:
    """Answer ``examples`` with the sampler settings ``config``; returns the answers and the forward passes."""
    model.eval()
    out = generate_text_output(model, tokenizer, [e["prompt"] for e in examples], config, batch_size=batch_size)
    return out.texts, out.forward_passes


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[dict], gen_length: int,
             batch_size: int) -> tuple[list[str], dict[str, float]]:
    """Answer ``examples`` (one token committed per step; a block-diffusion model with its block cache); returns
    the answers and exact match per task."""
    answers, _ = answer_prompts(model, tokenizer, examples, generation_defaults(model.config, gen_length=gen_length),
                                batch_size)
    hits: dict[str, list[int]] = {}
    for example, answer in zip(examples, answers):
        counts = hits.setdefault(example["task"], [0, 0])
        counts[0] += answer == example["answer"]
        counts[1] += 1
    return answers, {name: h / n for name, (h, n) in hits.items()}


def report_parallel_decoding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout: list[dict],
                             gen_length: int, batch_size: int, threshold: float = 0.9) -> float:
    """Print exact match and forward passes of parallel decoding (Fast-dLLM: commit every position whose
    confidence is at least ``threshold``) next to one token per step; returns its exact match."""
    rows = []
    for name, config in (("one token per step", generation_defaults(model.config, gen_length=gen_length)),
                         (f"threshold {threshold}", generation_defaults(model.config, gen_length=gen_length,
                                                                        threshold=threshold))):
        answers, passes = answer_prompts(model, tokenizer, heldout, config, batch_size)
        hits = sum(a == e["answer"] for a, e in zip(answers, heldout))
        batches = -(-len(heldout) // batch_size)
        rows.append((name, hits, passes / batches))
    print(f"\nsampler ({len(heldout)} prompts, batches of {batch_size}, {gen_length}-token canvas):")
    for name, hits, passes in rows:
        print(f"  {name:20s} exact match {100 * hits / len(heldout):5.1f}% ({hits}/{len(heldout)}), "
              f"{passes:.1f} forward passes per batch")
    return rows[-1][1] / len(heldout)


def require_matplotlib(plot: bool) -> None:
    """Fail at start, in one line, when the plot is wanted and matplotlib is missing (not after training)."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("dllm demo: loss.png needs matplotlib, which is not installed: "
                         "pip install 'dllm[plot]' (or run with --no_plot)")


def plot_curves(log_history: list[dict], exact_match: list[tuple[int, dict[str, float]]], path: Path) -> None:
    """Training loss against steps, next to held-out exact match per task when it was monitored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    fig, axes = plt.subplots(1, 2 if exact_match else 1, figsize=(11 if exact_match else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot([s for s, _ in points], [v for _, v in points])
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked cross-entropy (nats / answer token)")
    ax.set_title("dllm demo: training loss")
    ax.grid(alpha=0.3)
    if exact_match:
        ax = axes[0, 1]
        for name in exact_match[0][1]:
            ax.plot([s for s, _ in exact_match], [100 * scores[name] for _, scores in exact_match], marker="o",
                    label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out exact match (%)")
        ax.set_ylim(0, 100)
        ax.set_title("held-out prompts, denoised one token per step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(tasks: list[Task], heldout: list[dict], answers: list[str], num_samples: int) -> tuple[int, int]:
    """Print exact match per task and a few samples (a failure among them when there is one)."""
    per_task = {task.name: [0, 0] for task in tasks}
    for example, answer in zip(heldout, answers):
        per_task[example["task"]][0] += answer == example["answer"]
        per_task[example["task"]][1] += 1
    print(f"\nheld-out exact match ({len(heldout)} prompts, none seen in training):")
    for name, (hits, total) in per_task.items():
        print(f"  {name:8s} {100 * hits / total:5.1f}% ({hits}/{total})")
    print("samples:")
    for task in tasks:
        rows = [(e, a) for e, a in zip(heldout, answers) if e["task"] == task.name]
        wrong = [(e, a) for e, a in rows if a != e["answer"]][:1]
        shown = [(e, a) for e, a in rows if a == e["answer"]][: num_samples - len(wrong)] + wrong
        for example, answer in shown:
            mark = "ok " if answer == example["answer"] else "BAD"
            print(f"  [{mark}] {example['prompt']!r:20s} -> {answer!r:10s} (expected {example['answer']!r})")
    return sum(h for h, _ in per_task.values()), sum(t for _, t in per_task.values())


# ---- the demo's steps, in the order main() runs them ------------------------------------------------------------
def parse_arguments(argv: list[str] | None) -> tuple[DemoArguments, DemoTrainingConfig]:
    """Parse the flags, then set up what every step shares: logging, offline hub, CPU threads, the seed."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # no "Loading weights" bars for a 1 MB checkpoint
    args, train_args = OptionParser((DemoArguments, DemoTrainingConfig), prog="dllm demo").parse(argv)  # --config too
    if args.model_type == "bert" and args.objective == "bd3lm":
        raise UsageError("--objective bd3lm decodes with a key/value cache of finished blocks, which an encoder "
                         "(--model_type bert) does not keep; use --objective mdlm with --model_type bert")
    require_matplotlib(args.plot)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(train_args.seed)
    return args, train_args


@dataclass
class DemoTasks:
    """The task mix, what training streams and what evaluation asks."""

    tasks: list[Task]
    train_mix: list[Task]  # add repeated add_share times
    heldout: list[dict]  # disjoint from every training prompt by prompt hash
    gen_length: int  # the answer canvas, EOS-padded, that training fills and the sampler denoises
    heldout_fraction: float = 0.1  # the share of each task's prompt space held out (the split of every sampled row)


def build_tasks(args: DemoArguments, seed: int) -> DemoTasks:
    """Training prompts stream forever; held-out prompts are disjoint from them by prompt hash."""
    tasks = [SortDigits(3, args.sort_max_digits), ReverseWord(3, args.reverse_max_letters),
             AddNumbers(args.add_min_digits, args.add_max_digits, args.add_lsd_first, args.add_pad_answer)]
    train_mix = tasks + [task for task in tasks if task.name == "add"] * (args.add_share - 1)
    heldout = make_examples(tasks, args.num_eval_per_task, "test", seed=seed, heldout_fraction=args.heldout_fraction)
    gen_length = max(task.max_answer_length() for task in tasks) + 1
    return DemoTasks(tasks, train_mix, heldout, gen_length, args.heldout_fraction)


def train(args: DemoArguments, train_args: DemoTrainingConfig, demo: DemoTasks, tokenizer: PreTrainedTokenizerBase,
          model: PreTrainedModel,
          more_callbacks: Callable[[WallClockBudget], list[TrainerCallback]] | None = None
          ) -> tuple[MDLMTrainer, Progress]:
    """Train with MDLMTrainer + SFTDataCollator, as examples/llama3/sft.py does, within the step and time budget
    (``more_callbacks``: built from the budget, e.g. to pause it while they evaluate)."""
    budget = WallClockBudget(args.train_minutes * 60, train_args.max_steps)
    monitor_set = demo.heldout[: 50 * len(demo.tasks)]
    progress = Progress(budget, lambda m: evaluate(m, tokenizer, monitor_set, demo.gen_length,
                                                   args.eval_batch_size)[1],
                        args.eval_every_minutes * 60)
    trainer = BUDGET_CLOCK_TRAINERS[args.objective](
        model=model, args=train_args, processing_class=tokenizer, budget=budget,
        train_dataset=TaskStream(demo.train_mix, CharChatEncoder(tokenizer, demo.gen_length), train_args.seed,
                                 args.heldout_fraction),
        # Rows arrive tokenized with their EOS canvas; the collator right-pads them (attention 0, no loss).
        data_collator=SFTDataCollator(tokenizer),
        callbacks=[budget, progress, *(more_callbacks(budget) if more_callbacks else [])],
    )
    for callback in (PrinterCallback, ProgressCallback):  # the demo prints its own progress lines
        trainer.remove_callback(callback)
    print(f"training for {train_args.max_steps} steps or {args.train_minutes:g} min, whichever comes first ...",
          flush=True)
    trainer.train()
    seconds, tokens = budget.elapsed(), trainer.state.num_input_tokens_seen
    print(f"trained {trainer.state.global_step} steps, {tokens} tokens in {seconds / 60:.1f} min "
          f"({tokens / max(seconds, 1e-9):.0f} tokens/s)", flush=True)
    return trainer, progress


def save_and_evaluate(trainer: MDLMTrainer, tokenizer: PreTrainedTokenizerBase, progress: Progress,
                      args: DemoArguments, demo: DemoTasks, output_dir: Path) -> list[str]:
    """Save model, tokenizer and curves; answer the held-out prompts with the checkpoint as reloaded from disk."""
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(output_dir)
    if args.plot:
        plot_curves(trainer.state.log_history, progress.history, output_dir / "loss.png")
    # Every dllm verb (sample, chat, serve, eval) starts from these settings: the demo's answer canvas, filled
    # one token per step (steps None, saved as null: the sampler the exact-match line measures, and still one
    # token per step when a user asks for another --gen_length).
    # A block-diffusion checkpoint adds its exact block cache and block size.
    generation_defaults(trainer.model.config, gen_length=demo.gen_length).save_pretrained(output_dir)
    model = AutoModelForMaskedDiffusion.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    answers, _ = evaluate(model, tokenizer, demo.heldout, demo.gen_length, args.eval_batch_size)
    report_parallel_decoding(model, tokenizer, demo.heldout, demo.gen_length, args.eval_batch_size)
    return answers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo with command-line ``argv``; returns exact match, per-task counts and the step count."""
    start = process_start_time()
    args, train_args = parse_arguments(argv)
    output_dir = Path(train_args.output_dir)
    demo = build_tasks(args, train_args.seed)

    tokenizer, model = build_tokenizer_and_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {type(model).__name__}, {args.num_hidden_layers} layers x {args.hidden_size}, "
          f"{n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; tasks: {', '.join(t.name for t in demo.tasks)}; "
          f"{torch.get_num_threads()} CPU threads; objective {args.objective}"
          + (f" (blocks of {train_args.block_size})" if args.objective == "bd3lm" else ""), flush=True)

    trainer, progress = train(args, train_args, demo, tokenizer, model)
    answers = save_and_evaluate(trainer, tokenizer, progress, args, demo, output_dir)

    # The last line is the headline.
    hits, total = report(demo.tasks, demo.heldout, answers, args.num_samples_to_show)
    saved = "model, tokenizer and loss.png" if args.plot else "model and tokenizer"
    print(f"saved {saved} to {output_dir}")
    print(f"overall exact match: {100 * hits / total:.1f}% ({hits}/{total}) in {time.time() - start:.0f} s",
          flush=True)
    return {"exact_match": hits / total, "hits": hits, "total": total, "steps": trainer.state.global_step}


if __name__ == "__main__":
    main(sys.argv[1:])
