"""Offline visual demo: train a tiny random Qwen3-VL from scratch as a masked diffusion LM on rendered colour
grids, then answer questions about grids it never saw by iterative denoising. Nothing is downloaded.

    make demo-vl                                # = dllm demo-vl = python -m dllm.demo.vl
    python -m dllm.demo.vl --max_steps 2000     # shorter run; any flag of dllm sft qwen3_vl works too
    python -m dllm.demo.vl --help               # the demo's own flags (the recipe's: dllm sft qwen3_vl --help)

The task: a 3 x 3 grid of solid cells in 6 colours; "What colour is row R, column C?"; the answer is a colour
word, so chance is 1/6 = 16.7%. Held-out grids never occur in training: a grid is held out when the SHA-256 of
its shape and colours falls in the held-out share (10%), training draws only the other grids, and evaluation
asks one question about each of 300 distinct held-out 3 x 3 grids.

Steps, on the code path of ``examples/qwen3_vl/sft.py``:

1. render the grids with PIL into ``OUTPUT_DIR/data/images`` and write ``train.json`` in the generic
   ``{messages, images}`` format (``<image>`` in the user turn, image paths relative to the file) that
   :func:`dllm.data.load_sft_dataset` detects, and ``heldout.json`` (image, question, answer, grid);
2. build a word-level tokenizer with Qwen's special tokens, Qwen3-VL's processor (pixel bounds that never resize
   a grid: one 32 x 32 cell is one merged 2 x 2 patch, one language-model token) and a random-init
   ``Qwen3VLForMaskedLM`` through ``dllm.auto``, saved with ``save_pretrained`` to ``OUTPUT_DIR/init``;
3. train with the one SFT recipe (:func:`dllm.sft.recipe.main`, what ``dllm sft qwen3_vl`` runs, given parsed
   options: ``lora=False``, ``freeze_vision=False``, ``freeze_merger=False``): the random vision tower learns too;
4. reload the checkpoint (``from_pretrained``) and answer the held-out questions in batches of 100, one token
   committed per step, with the Qwen3-VL sampler inputs (``FAMILIES["qwen3_vl"].image_inputs``, what
   ``dllm sample --image`` uses; this package may not import a pipeline) and :func:`dllm.core.sampling.generate`;
   print accuracy by row, column and colour with the chance level, samples, save ``samples.png`` (image with the
   asked cell outlined, question, answer, expected) and end with ``held-out accuracy: NN.N% (N/M) in S s``
   (S: wall time since the process started).

Why each default is what it is (the measurements behind them): ``docs/demos.md``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from transformers import PreTrainedTokenizerFast, set_seed
from transformers.utils import logging as hf_logging

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion, load_processor
from dllm.core.sampling import DiffusionGenerationConfig, answer_ids, generate, with_tokenizer_ids
from dllm.pipelines.qwen3_vl.chat_template import QWEN3_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
from dllm.pipelines.qwen3_vl.testing import MERGE, PATCH, build_tiny_qwen3_vl_processor, tiny_qwen3_vl_config
from dllm.demo.run import process_start_time
from dllm.sft.recipe import main as recipe_main
from dllm.sft.recipe import make_parser
from dllm.errors import UsageError
from dllm.options import OptionParser

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

# Well-separated hues, so a colour is a property of the pixels, not a judgement call.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "purple": (140, 50, 170), "orange": (245, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15),
}
# The mask token, added to Qwen's special tokens (what Qwen3VLProcessor and its chat template expect).
MASK_TOKEN = "<|mask|>"
# The tokenizer's words: one token per word, digit and punctuation mark (a hub tokenizer also gives common words
# one token). Measured against a character tokenizer: rows of 31 tokens instead of 69 (the prompt's words and the
# template's role names were spelled out), so a step costs less, the question's row and column sit a few tokens
# from the answer, and every colour is one token, so every answer has the same length (with characters, the
# number of answer positions told "red" from "purple", and the model learned to read the length: training loss
# fell to 0.12 while the sampler, whose canvas has one length, answered the same colour every time).
WORDS = ["user", "assistant", "system", "What", "colour", "is", "row", "column", "cell", "the", "in", "of", "and",
         *COLOURS, *"0123456789", ",", ".", "?", ":", "'", "\n"]
ANSWER_CANVAS = 3  # answer positions the sampler fills: the colour word, <|im_end|> and the newline after it


@dataclass
class VLDemoArguments:
    """The task, the model, the training budget and the evaluation of the visual demo (the defaults and why: the
    module docstring and docs/demos.md). Flags not listed here are the recipe's (``dllm sft qwen3_vl --help``),
    parsed by its parser over the demo's defaults for them (:func:`recipe_options`)."""

    output_dir: str = field(default="outputs/demo-vl", metadata={"help": "Data, checkpoint and samples.png go here."})
    seed: int = field(default=42, metadata={"help": "Seed of the data, the model's initialisation and training."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0: torch's default); the second core "
                                                      "decodes and collates (dataloader_num_workers)."})
    plot: bool = field(default=True, metadata={"help": "Save samples.png (needs matplotlib: pip install "
                                                       "'dllm[plot]')."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run checkpoint code (auto_map) where the recipe loads the model and processor and where "
                "evaluation reloads them; review it first."})
    # Task.
    grid_rows: int = field(default=3, metadata={"help": "Rows of the colour grid."})
    grid_cols: int = field(default=3, metadata={"help": "Columns of the colour grid."})
    cell_pixels: int = field(default=32, metadata={"help": "Cell side in pixels; 32 = one LM image token per cell."})
    num_colours: int = field(default=6, metadata={"help": f"Colours used, the first N of {', '.join(COLOURS)}."})
    num_train_images: int = field(default=8000, metadata={"help": "Training grids (each asked questions_per_image "
                                                                  "questions)."})
    questions_per_image: int = field(default=3, metadata={"help": "Training rows per grid (distinct cells)."})
    mixed_sizes: bool = field(default=True, metadata={"help": "Also train on other grid shapes (1..rows x 1..cols): "
                                                              "single-row and single-column grids teach the lookup."})
    train_full_share: float = field(default=0.5, metadata={"help": "With mixed_sizes: share of full-size training "
                                                                   "grids."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of all grids reserved for evaluation "
                                                                   "(by hash)."})
    num_eval: int = field(default=300, metadata={"help": "Held-out questions (one per held-out grid)."})
    # Model: Qwen3-VL's architecture, tiny.
    hidden_size: int = field(default=64, metadata={"help": "Language-model width (also the vision output width)."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Language-model layers."})
    vision_hidden_size: int = field(default=64, metadata={"help": "Vision tower width."})
    vision_depth: int = field(default=2, metadata={"help": "Vision tower blocks (each feeds a DeepStack merger)."})
    num_attention_heads: int = field(default=2, metadata={"help": "Language-model attention heads (and key/value "
                                                                   "heads)."})
    head_dim: int = field(default=64, metadata={"help": "Attention head width (0: hidden_size / heads); QK-norm bounds "
                                                        "the attention logits by about its square root."})
    rope_theta: float = field(default=100.0, metadata={"help": "Base of the language model's multimodal RoPE."})
    # Training (passed to the recipe as its flags).
    max_steps: int = field(default=5000, metadata={"help": "Optimizer steps (~8 min at ~11 steps/s on 2 free cores)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per optimizer step."})
    learning_rate: float = field(default=5e-3, metadata={"help": "Peak AdamW learning rate."})
    dataloader_num_workers: int = field(default=1, metadata={"help": "DataLoader worker processes (image decoding "
                                                                     "and collation)."})
    # Evaluation.
    eval_batch_size: int = field(default=100, metadata={"help": "Questions denoised together."})
    num_samples_to_show: int = field(default=6, metadata={"help": "Samples printed and drawn."})


# ---- the task -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A grid of ``rows`` x ``cols`` cells; ``colours`` holds each cell's colour index, row-major."""

    rows: int
    cols: int
    colours: tuple[int, ...]

    def colour_at(self, row: int, col: int) -> int:
        """The colour index of the cell in ``row``, ``col`` (0-based)."""
        return self.colours[row * self.cols + col]


def colour_names(num_colours: int) -> list[str]:
    """The first ``num_colours`` colour words of :data:`COLOURS`."""
    if not 2 <= num_colours <= len(COLOURS):
        raise UsageError(f"num_colours must be in [2, {len(COLOURS)}], got {num_colours}")
    return list(COLOURS)[:num_colours]


def is_heldout(grid: Grid, fraction: float) -> bool:
    """Whether ``grid`` is reserved for evaluation: the SHA-256 of its shape and colours, as a number in [0, 1),
    falls below ``fraction`` (independent of the seed, so no seed ever trains on a held-out grid)."""
    key = f"{grid.rows}x{grid.cols}:" + ",".join(map(str, grid.colours))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


def random_grid(rows: int, cols: int, num_colours: int, rng: random.Random) -> Grid:
    """A grid of independent uniformly drawn colours."""
    return Grid(rows, cols, tuple(rng.randrange(num_colours) for _ in range(rows * cols)))


def training_grids(args: VLDemoArguments, rng: random.Random) -> list[Grid]:
    """``num_train_images`` grids that are not held out. With ``mixed_sizes`` a ``train_full_share`` of them have
    the full size and the rest 1..grid_rows x 1..grid_cols cells (any other shape), so the row and the column
    lookups are also seen one at a time (a 3 x 1 grid asks only for a row)."""
    shapes = [(r, c) for r in range(1, args.grid_rows + 1) for c in range(1, args.grid_cols + 1)
              if (r, c) != (args.grid_rows, args.grid_cols)]
    grids: list[Grid] = []
    while len(grids) < args.num_train_images:
        full = not args.mixed_sizes or not shapes or rng.random() < args.train_full_share
        rows, cols = (args.grid_rows, args.grid_cols) if full else rng.choice(shapes)
        grid = random_grid(rows, cols, args.num_colours, rng)
        if not is_heldout(grid, args.heldout_fraction):
            grids.append(grid)
    return grids


def heldout_grids(args: VLDemoArguments, rng: random.Random) -> list[Grid]:
    """``num_eval`` distinct full-size held-out grids."""
    if args.num_colours ** (args.grid_rows * args.grid_cols) * args.heldout_fraction < 2 * args.num_eval:
        raise UsageError(f"{args.num_eval} distinct held-out {args.grid_rows}x{args.grid_cols} grids in "
                         f"{args.num_colours} colours are too many; use more cells or colours or fewer questions")
    grids: dict[Grid, None] = {}
    while len(grids) < args.num_eval:
        grid = random_grid(args.grid_rows, args.grid_cols, args.num_colours, rng)
        if is_heldout(grid, args.heldout_fraction):
            grids[grid] = None
    return list(grids)


def question(row: int, col: int) -> str:
    """The question about the cell in ``row``, ``col`` (0-based; asked 1-based)."""
    return f"What colour is row {row + 1}, column {col + 1}?"


def render_grid(grid: Grid, cell: int) -> PILImage:
    """The grid as an RGB image of ``rows * cell`` x ``cols * cell`` pixels, each cell one solid colour."""
    from PIL import Image, ImageDraw

    names = list(COLOURS)
    image = Image.new("RGB", (grid.cols * cell, grid.rows * cell))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(grid.colours):
        r, c = divmod(i, grid.cols)
        draw.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=COLOURS[names[colour]])
    return image


def cell_colour(image: PILImage, row: int, col: int, cell: int) -> tuple[int, int, int]:
    """The colour at the centre of a cell (what a reader of the image sees there)."""
    return image.getpixel((col * cell + cell // 2, row * cell + cell // 2))


@dataclass
class DemoData:
    """What the demo wrote: the training file, the held-out questions and the grids behind both."""

    train_file: Path
    heldout: list[dict[str, Any]]  # {"image", "row", "col", "question", "answer", "grid"}
    train_grids: list[Grid]
    heldout_grids: list[Grid]


def make_rows(grids: list[Grid], split: str, per_image: int, cell: int, folder: Path,
              rng: random.Random) -> list[dict[str, Any]]:
    """Render each grid to ``folder/images/{split}-{i}.png`` and ask up to ``per_image`` questions about distinct
    cells; rows carry the path relative to ``folder``, the cell asked and the grid."""
    names, rows = list(COLOURS), []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, grid in enumerate(grids):
        path = f"images/{split}-{i}.png"
        render_grid(grid, cell).save(folder / path)
        for index in rng.sample(range(len(grid.colours)), min(per_image, len(grid.colours))):
            r, c = divmod(index, grid.cols)
            rows.append({"image": path, "row": r, "col": c, "question": question(r, c),
                         "answer": names[grid.colour_at(r, c)], "grid": [grid.rows, grid.cols, *grid.colours]})
    return rows


def write_data(args: VLDemoArguments, folder: Path) -> DemoData:
    """Render training and held-out grids (disjoint by :func:`is_heldout`) and write ``train.json`` (chat rows,
    ``{messages, images}``) and ``heldout.json`` (one question per held-out grid) into ``folder``."""
    rng = random.Random(args.seed)
    train_grids, eval_grids = training_grids(args, rng), heldout_grids(args, rng)
    train = make_rows(train_grids, "train", args.questions_per_image, args.cell_pixels, folder, rng)
    heldout = make_rows(eval_grids, "heldout", 1, args.cell_pixels, folder, rng)
    rng.shuffle(train)
    chat = [{"messages": [{"role": "user", "content": "<image>" + row["question"]},
                          {"role": "assistant", "content": row["answer"]}], "images": [row["image"]]}
            for row in train]
    train_file = folder / "train.json"
    train_file.write_text(json.dumps(chat), encoding="utf-8")
    (folder / "heldout.json").write_text(json.dumps(heldout), encoding="utf-8")
    return DemoData(train_file, heldout, train_grids, eval_grids)


# ---- the model ------------------------------------------------------------------------------------------------
def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` with Qwen's special tokens, a mask token and the chat template
    above: spaces separate words and are dropped, every other non-letter is a token of its own."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|unk|>", *QWEN_SPECIAL_TOKENS, MASK_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", behavior="removed"),
                                                     pre_tokenizers.Split(Regex(r"[^A-Za-z]"), behavior="isolated")])
    backend.decoder = decoders.WordPiece(cleanup=True)  # words joined by spaces, none before punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<|unk|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        mask_token=MASK_TOKEN, additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
        padding_side="right",
    )


def build_processor(args: VLDemoArguments) -> Any:
    """Qwen3-VL's processor with pixel bounds that keep the grid image at its size (no resize: a cell stays
    one merged patch, one LM token), over the word-level tokenizer."""
    return build_tiny_qwen3_vl_processor(build_tokenizer(), min_pixels=args.cell_pixels**2,
                                         max_pixels=args.grid_rows * args.grid_cols * args.cell_pixels**2)


def model_config(args: VLDemoArguments, tokenizer: PreTrainedTokenizerFast) -> Any:
    """A tiny Qwen3-VL config: DeepStack from every vision block into the first language layers."""
    heads = args.num_attention_heads
    head_dim = args.head_dim or args.hidden_size // heads
    # Rotary pairs per axis (temporal, height, width) in Qwen3-VL's proportions (its 128-dim heads: 24, 20, 20).
    hw = (head_dim // 2) * 5 // 16
    patches_per_side = max(args.grid_rows, args.grid_cols) * args.cell_pixels // PATCH
    vision = dict(depth=args.vision_depth, hidden_size=args.vision_hidden_size,
                  intermediate_size=4 * args.vision_hidden_size, num_heads=max(1, args.vision_hidden_size // 16),
                  num_position_embeddings=patches_per_side**2,
                  deepstack_visual_indexes=list(range(min(args.vision_depth, args.num_hidden_layers - 1))))
    return tiny_qwen3_vl_config(
        tokenizer, tie_word_embeddings=True, vision=vision, hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size, num_hidden_layers=args.num_hidden_layers, num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=head_dim, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta,
                         "mrope_section": [head_dim // 2 - 2 * hw, hw, hw], "mrope_interleaved": True})


def save_initial_model(args: VLDemoArguments, folder: Path) -> int:
    """Save a random-init Qwen3VLForMaskedLM and its processor to ``folder``; returns the parameter count."""
    processor = build_processor(args)
    torch.manual_seed(args.seed)
    model = AutoModelForMaskedDiffusion.from_config(model_config(args, processor.tokenizer))
    model.config.mask_token_id = model.config.text_config.mask_token_id = processor.tokenizer.mask_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# ---- training and evaluation ----------------------------------------------------------------------------------
def recipe_options(args: VLDemoArguments, init_dir: Path, train_file: Path, checkpoint_dir: Path,
                   extra: list[str]) -> tuple[Any, ...]:
    """The recipe's parsed options: every weight trains (a random vision tower must learn), the demo's training
    defaults (the text demo's optimizer and schedule; ``time_eps`` and uniform weighting: see docs/demos.md), and
    over them ``extra``, the flags the user passed that the demo does not define, parsed by the recipe's own parser
    (a mistake is one line)."""
    parser = make_parser(FAMILIES["qwen3_vl"], prog="dllm demo-vl")
    parser.set_defaults(
        model_name_or_path=str(init_dir), dataset_args=str(train_file), output_dir=str(checkpoint_dir),
        lora=False, freeze_vision=False, freeze_merger=False, dtype="float32", use_cpu=True, seed=args.seed,
        trust_remote_code=args.trust_remote_code, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, optim="adamw_torch_fused",
        adam_beta2=0.98, weight_decay=0.0, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.03, max_grad_norm=1.0, time_eps=0.8,
        loss_weighting="uniform", logging_steps=250, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, include_num_input_tokens_seen=True, dataloader_num_workers=args.dataloader_num_workers,
    )
    return parser.parse(extra)


def answer_questions(model: Any, processor: Any, rows: list[dict[str, Any]], folder: Path, gen_length: int,
                     batch_size: int) -> list[str]:
    """Answer each held-out row's question about its image by iterative denoising (one token per step), in
    batches: the Qwen3-VL sampler inputs from ``dllm.auto.FAMILIES`` (as ``dllm sample --image``), then
    :func:`dllm.core.sampling.generate`; answers are cut at the first EOS."""
    from PIL import Image

    prepare = FAMILIES["qwen3_vl"].image_inputs
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=gen_length), processor.tokenizer)
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        conversations = [[{"role": "user", "content": [{"type": "image", "image": Image.open(folder / r["image"])
                                                        .convert("RGB")}, {"type": "text", "text": r["question"]}]}]
                         for r in batch]
        prompt_ids, attention_mask, kwargs = prepare(model, processor, conversations, gen_length)
        out = generate(model, prompt_ids, config, attention_mask=attention_mask, model_kwargs=kwargs)
        answers += [processor.tokenizer.decode(ids, skip_special_tokens=True)
                    for ids in answer_ids(out.sequences.cpu(), prompt_ids.shape[1], config.eos_token_id)]
    return answers


def report(rows: list[dict[str, Any]], answers: list[str], args: VLDemoArguments) -> int:
    """Print accuracy by row, by column and by colour asked, the chance level, and samples; returns the hits."""
    hits = [a == r["answer"] for r, a in zip(rows, answers)]
    print(f"\nheld-out accuracy ({len(rows)} questions about grids never seen in training; chance "
          f"{100 / args.num_colours:.1f}% = 1/{args.num_colours} colours):")
    for label, key in (("row", lambda r: f"row {r['row'] + 1}"), ("column", lambda r: f"column {r['col'] + 1}"),
                       ("colour", lambda r: r["answer"])):
        groups: dict[str, list[bool]] = {}
        for row, hit in zip(rows, hits):
            groups.setdefault(key(row), []).append(hit)
        print(f"  by {label:7s}" + "  ".join(f"{name} {100 * sum(g) / len(g):.0f}%"
                                              for name, g in sorted(groups.items())))
    print("samples:")
    for row, answer in samples(rows, answers, args.num_samples_to_show):
        mark = "ok " if answer == row["answer"] else "BAD"
        print(f"  [{mark}] {row['image']:22s} {row['question']!r} -> {answer!r} (expected {row['answer']!r})")
    return sum(hits)


def samples(rows: list[dict[str, Any]], answers: list[str], count: int) -> list[tuple[dict[str, Any], str]]:
    """The first ``count`` rows with their answers, with the first wrong answer among them when there is one."""
    pairs = list(zip(rows, answers))
    wrong = [p for p in pairs if p[1] != p[0]["answer"]][:1]
    return [p for p in pairs if p[1] == p[0]["answer"]][: count - len(wrong)] + wrong


def plot_samples(pairs: list[tuple[dict[str, Any], str]], folder: Path, cell: int, path: Path) -> None:
    """A figure of the samples: each image with the asked cell outlined, its question, the model's answer and the
    expected one (a wrong answer in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(pairs), figsize=(2.6 * len(pairs), 3.6), squeeze=False)
    for ax, (row, answer) in zip(axes[0], pairs):
        with Image.open(folder / row["image"]) as image:
            ax.imshow(image.convert("RGB"), interpolation="nearest")
            rows, cols = image.height // cell, image.width // cell
        ax.set_xticks([cell * (c + 0.5) for c in range(cols)], [str(c + 1) for c in range(cols)], fontsize=8)
        ax.set_yticks([cell * (r + 0.5) for r in range(rows)], [str(r + 1) for r in range(rows)], fontsize=8)
        ax.add_patch(matplotlib.patches.Rectangle((row["col"] * cell, row["row"] * cell), cell - 1, cell - 1,
                                                  fill=False, edgecolor="black", linewidth=2.5))
        ax.set_title(question(row["row"], row["col"]), fontsize=8)
        ok = answer == row["answer"]
        ax.set_xlabel(f"answer: {answer!r}\nexpected: {row['answer']!r}", fontsize=9, color="black" if ok else "red")
    fig.suptitle("dllm demo-vl: held-out grids (never trained on), answered by iterative denoising", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---- the demo's steps, in the order main() runs them ------------------------------------------------------------
def parse_arguments(argv: list[str] | None) -> tuple[VLDemoArguments, list[str]]:
    """The demo's flags and the rest (recipe flags); sets up logging, offline hub, CPU threads and the seed."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()  # no "Map" bars for loading the demo's own file
    parser = OptionParser([VLDemoArguments], prog="dllm demo-vl", config_file=False)
    args, extra = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    missing = [name for name in ("PIL", "torchvision") if importlib.util.find_spec(name) is None]
    missing += ["matplotlib"] if args.plot and importlib.util.find_spec("matplotlib") is None else []
    if missing:
        raise UsageError(f"dllm demo-vl needs {', '.join(missing)}: pip install 'dllm[vision,plot]' "
                         "(--no_plot runs without matplotlib)")
    colour_names(args.num_colours)  # bad sizes fail before any rendering
    if args.cell_pixels % (PATCH * MERGE):
        raise UsageError(f"cell_pixels must be a multiple of {PATCH * MERGE}, got {args.cell_pixels}")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    return args, extra


def train(args: VLDemoArguments, data: DemoData, output_dir: Path, extra: list[str]) -> Path:
    """Build and save the initial model, then train it with the Qwen3-VL recipe; returns the checkpoint folder."""
    init_dir, checkpoint_dir = output_dir / "init", output_dir / "checkpoint"
    n_params = save_initial_model(args, init_dir)
    print(f"model: Qwen3VLForMaskedLM, random init, {n_params / 1e6:.2f}M parameters (language model "
          f"{args.num_hidden_layers} x {args.hidden_size}, vision tower {args.vision_depth} x "
          f"{args.vision_hidden_size}); {torch.get_num_threads()} CPU threads", flush=True)
    options = recipe_options(args, init_dir, data.train_file, checkpoint_dir, extra)
    print(f"training: dllm sft qwen3_vl, {options[2].max_steps} steps on {data.train_file}", flush=True)
    began = time.time()
    trainer = recipe_main(*options)
    seconds, tokens = time.time() - began, trainer.state.num_input_tokens_seen
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [float("nan")]
    print(f"trained {trainer.state.global_step} steps, {tokens} tokens in {seconds / 60:.1f} min "
          f"({trainer.state.global_step / max(seconds, 1e-9):.1f} steps/s, {tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s); loss {losses[0]:.3f} -> {losses[-1]:.3g}", flush=True)
    return checkpoint_dir


def evaluate(args: VLDemoArguments, data: DemoData, checkpoint_dir: Path, data_dir: Path) -> list[str]:
    """Reload the checkpoint from disk and answer the held-out questions; saves its sampler settings."""
    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoint_dir),
                                                        trust_remote_code=args.trust_remote_code).eval()
    processor = load_processor(str(checkpoint_dir), args.trust_remote_code)
    gen_length = ANSWER_CANVAS
    DiffusionGenerationConfig(gen_length=gen_length).save_pretrained(checkpoint_dir)
    began = time.time()
    answers = answer_questions(model, processor, data.heldout, data_dir, gen_length, args.eval_batch_size)
    print(f"answered {len(answers)} held-out questions in {time.time() - began:.0f} s "
          f"({gen_length}-token canvas, one token per step)", flush=True)
    return answers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the visual demo with command-line ``argv``; returns the accuracy, counts and output paths."""
    start = process_start_time()
    args, extra = parse_arguments(argv)
    output_dir = Path(args.output_dir)
    data_dir = output_dir / "data"
    data = write_data(args, data_dir)
    print(f"task: {args.grid_rows}x{args.grid_cols} grids of {args.num_colours} colours "
          f"({', '.join(colour_names(args.num_colours))}), 'What colour is row R, column C?'; "
          f"{len(data.train_grids)} training grids, {len(data.heldout)} held-out grids (disjoint by hash) "
          f"in {data_dir}", flush=True)
    checkpoint_dir = train(args, data, output_dir, extra)
    answers = evaluate(args, data, checkpoint_dir, data_dir)
    hits = report(data.heldout, answers, args)
    figure = output_dir / "samples.png"
    if args.plot:
        plot_samples(samples(data.heldout, answers, args.num_samples_to_show), data_dir, args.cell_pixels, figure)
        print(f"saved the checkpoint to {checkpoint_dir} and the samples to {figure}")
    total = len(data.heldout)
    print(f"held-out accuracy: {100 * hits / total:.1f}% ({hits}/{total}) in {time.time() - start:.0f} s",
          flush=True)
    return {"accuracy": hits / total, "hits": hits, "total": total, "checkpoint": checkpoint_dir,
            "figure": figure if args.plot else None, "data": data}


if __name__ == "__main__":
    main(sys.argv[1:])
