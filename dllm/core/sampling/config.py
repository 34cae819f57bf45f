"""The sampler's options: one dataclass, passed whole and overridden per call with ``dataclasses.replace``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Remasking = Literal["low_confidence", "random", "margin", "entropy"]
CacheMode = Literal["none", "prefix", "dual", "block"]

REMASKING: tuple[str, ...] = ("low_confidence", "random", "margin", "entropy")
CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual", "block")
# Saved next to a checkpoint's config.json: the sampler settings the checkpoint was trained for.
GENERATION_CONFIG_NAME = "diffusion_generation_config.json"
# Per-call display options, never saved with a checkpoint.
_NOT_SAVED = ("record_history", "progress")


@dataclass
class DiffusionGenerationConfig:
    """Options for :func:`~dllm.core.sampling.generate` and the text helpers.

    Defaults reproduce the original sampler: one block, one token per step, argmax, low-confidence remasking,
    no cache. Every field is checked when the config is built (and again after ``dataclasses.replace``).
    """

    gen_length: int = 32
    """Number of answer positions after the prompt (answer plus EOS padding)."""
    steps: int | None = None
    """Denoising steps over the whole answer, spread over blocks in proportion to their length (at least one
    per block); ``None`` means one token per step. With ``threshold`` it is an upper bound."""
    block_size: int | None = None
    """Semi-autoregressive blocks (LLaDA arXiv 2502.09992, section 2.4): blocks are decoded left to right and
    a step only commits positions of the current block. ``None`` is one block (pure diffusion)."""
    remasking: Remasking = "low_confidence"
    """How a step ranks the masked positions it may commit, most confident first: ``low_confidence`` (LLaDA)
    by the probability of the chosen token, ``random`` by a uniform draw, ``margin`` by top-1 minus top-2
    probability, ``entropy`` by minus the entropy of the predicted distribution (lower entropy first)."""
    temperature: float = 0.0
    """0 picks the argmax at every position; above 0 samples from softmax(filtered logits / temperature)."""
    top_k: int | None = None
    """Sample only among the ``top_k`` most likely tokens (ignored at temperature 0)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches ``top_p`` (ignored at
    temperature 0)."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding (arXiv 2505.22618): also commit every masked position of the current block
    whose confidence (on the ``remasking`` scale) is at least ``threshold``; blocks can finish in fewer steps."""
    cfg_scale: float = 0.0
    """Classifier-free guidance (LLaDA): ``uncond + (cfg_scale + 1) * (cond - uncond)``, where the
    unconditional input has the prompt replaced by mask tokens. 0 is off; above 0 doubles the forward passes."""
    cache: CacheMode = "none"
    """Key/value caching (Fast-dLLM): ``none`` is exact; ``prefix`` and ``dual`` are approximations for a
    bidirectional model, see :mod:`dllm.core.sampling.forward` for when they are exact. ``block``: a block-diffusion
    model's exact cache (finished blocks are cached once, each step feeds the current block only)."""
    mask_token_id: int | None = None
    """Defaults to the tokenizer's mask token in the text helpers; required by ``generate`` and ``infill``."""
    eos_token_id: int | None = None
    """Answers end at the first EOS; once every row has finished a block holding EOS, later blocks are
    skipped and filled with EOS. Defaults to the tokenizer's in the text helpers; ``None`` never stops early."""
    pad_token_id: int = 0
    """Fills the left padding of shorter prompts (never attended)."""
    record_history: bool = False
    """Return, for every step, which positions were committed with which token and confidence."""
    progress: bool = False
    """Show ``tqdm`` progress bars over prompts and steps."""

    def __post_init__(self):
        _check(self.gen_length >= 1, "gen_length", self.gen_length, "at least 1")
        _check(self.steps is None or self.steps >= 1, "steps", self.steps, "None or at least 1")
        _check(self.block_size is None or self.block_size >= 1, "block_size", self.block_size, "None or >= 1")
        _check(self.remasking in REMASKING, "remasking", self.remasking, f"one of {REMASKING}")
        _check(self.cache in CACHE_MODES, "cache", self.cache, f"one of {CACHE_MODES}")
        _check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(self.top_k is None or self.top_k >= 1, "top_k", self.top_k, "None or at least 1")
        _check(self.top_p is None or 0 < self.top_p <= 1, "top_p", self.top_p, "None or in (0, 1]")
        _check(self.cfg_scale >= 0, "cfg_scale", self.cfg_scale, ">= 0")


    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the sampler settings next to a checkpoint (``diffusion_generation_config.json``); returns the
        file. Every ``dllm`` verb that loads the checkpoint starts from them, flags and requests override."""
        path = Path(directory) / GENERATION_CONFIG_NAME
        values = {k: v for k, v in asdict(self).items() if k not in _NOT_SAVED}
        path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> DiffusionGenerationConfig:
        """The settings saved with a checkpoint (defaults when it has none), with ``overrides`` applied.

        Raises:
            ValueError: the file is not a JSON object of known fields with valid values (the message names it).
        """
        path = Path(directory) / GENERATION_CONFIG_NAME
        values: dict[str, Any] = {}
        if path.is_file():
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from err
            if not isinstance(values, dict):
                raise ValueError(f"{path}: expected a JSON object of sampler settings")
            unknown = sorted(set(values) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"{path}: unknown sampler settings {unknown}")
        try:
            return cls(**{**values, **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"DiffusionGenerationConfig.{name} must be {expected}, got {value!r}")
