"""The sampler's options: one dataclass, passed whole and overridden per call with ``dataclasses.replace``.

:class:`DiffusionGenerationConfig` is the only list of sampler options: the command-line flags of every verb, the
request fields of ``dllm serve`` and chat's ``/settings`` are built from its fields, their help from each field's
``metadata["help"]`` and which of them each place offers from ``metadata["kind"]`` (:data:`FIELD_KINDS`). Every
value is checked when the config is built (and again after ``dataclasses.replace``); a refused value raises
:class:`SamplerSettingError`, which names the field.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

REMASKING: tuple[str, ...] = ("low_confidence", "random", "margin", "entropy")
CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual", "block")
# The field types, built from the tuples so that a value added there is accepted everywhere (flags, requests).
Remasking = Literal[REMASKING]  # type: ignore[valid-type]
CacheMode = Literal[CACHE_MODES]  # type: ignore[valid-type]
# Saved next to a checkpoint's config.json: the sampler settings the checkpoint was trained for.
GENERATION_CONFIG_NAME = "diffusion_generation_config.json"
# The largest temperature accepted: OpenAI's documented range is [0, 2], which the clients that talk to
# ``dllm serve`` check too; above it softmax(logits / T) of a trained model is close to uniform noise.
MAX_TEMPERATURE = 2.0
FIELD_KINDS = ("sampler", "token_id", "per_call")
"""``metadata["kind"]`` of a field: ``sampler`` (a setting a user chooses: a flag, a request field, a ``/settings``
name; saved with a checkpoint), ``token_id`` (comes with the tokenizer: a flag, saved, never a request field) or
``per_call`` (a display switch the caller decides: not a flag, never saved, never part of a batch key)."""


class SamplerSettingError(ValueError):
    """A sampler value :class:`DiffusionGenerationConfig` refuses: ``field`` is its name, ``message`` what was wrong
    (``"must be at least 1, got 0"``), so each interface can name the field its own way (``--steps``, a request's
    ``steps``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"DiffusionGenerationConfig.{field} {message}")
        self.field, self.message = field, message


def _option(default: Any, help: str, kind: str = "sampler") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass
class DiffusionGenerationConfig:
    """Options for :func:`~dllm.core.sampling.generate` and the text helpers.

    Defaults reproduce the original sampler: one block, one token per step, argmax, low-confidence remasking,
    no cache. Every field is checked when the config is built (and again after ``dataclasses.replace``).
    """

    gen_length: int = _option(32, "Number of answer positions after the prompt (answer plus EOS padding).")
    steps: int | None = _option(None, (
        "Denoising steps over the whole answer, spread over blocks in proportion to their length (at least one per "
        "block, at most one per position); None means one token per step. With threshold it is an upper bound."))
    block_size: int | None = _option(None, (
        "Semi-autoregressive blocks (LLaDA arXiv 2502.09992, section 2.4): blocks are decoded left to right and a "
        "step only commits positions of the current block. None is one block (pure diffusion)."))
    remasking: Remasking = _option("low_confidence", (
        "How a step ranks the masked positions it may commit, most confident first: low_confidence (LLaDA) by the "
        "probability of the chosen token, random by a uniform draw, margin by top-1 minus top-2 probability, "
        "entropy by minus the entropy of the predicted distribution (lower entropy first)."))
    temperature: float = _option(0.0, (
        f"0 picks the argmax at every position; above 0 (at most {MAX_TEMPERATURE}) samples from "
        "softmax(filtered logits / temperature)."))
    top_k: int | None = _option(None, "Sample only among the top_k most likely tokens (ignored at temperature 0).")
    top_p: float | None = _option(None, (
        "Nucleus sampling: the smallest set of tokens whose probability reaches top_p, in (0, 1] (ignored at "
        "temperature 0)."))
    threshold: float | None = _option(None, (
        "Fast-dLLM parallel decoding (arXiv 2505.22618): also commit every masked position of the current block "
        "whose confidence (on the remasking scale) is at least threshold; blocks can finish in fewer steps. In "
        "(0, 1], or at most 0 with entropy remasking (minus an entropy)."))
    cfg_scale: float = _option(0.0, (
        "Classifier-free guidance (LLaDA): uncond + (cfg_scale + 1) * (cond - uncond), where the unconditional "
        "input has the prompt replaced by mask tokens. 0 is off; above 0 doubles the forward passes."))
    cache: CacheMode = _option("none", (
        "Key/value caching (Fast-dLLM): none is exact; prefix and dual are approximations for a bidirectional "
        "model, see dllm.core.sampling.forward for when they are exact; block: a block-diffusion model's exact "
        "cache (finished blocks are cached once, each step feeds the current block only)."))
    mask_token_id: int | None = _option(None, (
        "Defaults to the tokenizer's mask token in the text helpers; required by generate and infill."), "token_id")
    eos_token_id: int | None = _option(None, (
        "Answers end at the first EOS; once every row has finished a block holding EOS, later blocks are skipped "
        "and filled with EOS. Defaults to the tokenizer's in the text helpers; None never stops early."), "token_id")
    pad_token_id: int = _option(0, "Fills the left padding of shorter prompts (never attended).", "token_id")
    record_history: bool = _option(False, (
        "Return, for every step, which positions were committed with which token and confidence."), "per_call")
    progress: bool = _option(False, "Show tqdm progress bars over prompts and steps.", "per_call")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field and the fields together.

        Raises:
            SamplerSettingError: the first value refused, naming its field.
        """
        hints = _hints()
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        _check(self.gen_length >= 1, "gen_length", self.gen_length, "at least 1")
        _check(self.block_size is None or self.block_size >= 1, "block_size", self.block_size, "None or at least 1")
        if self.steps is not None:
            blocks = -(-self.gen_length // (self.block_size or self.gen_length))
            _check(self.steps <= self.gen_length, "steps", self.steps, f"at most gen_length ({self.gen_length})")
            _check(self.steps >= blocks, "steps", self.steps, f"at least the number of blocks, {blocks} (gen_length "
                   f"{self.gen_length} in blocks of {self.block_size or self.gen_length})")
        _check(0 <= self.temperature <= MAX_TEMPERATURE, "temperature", self.temperature,
               f"in [0, {MAX_TEMPERATURE}]")
        _check(self.top_k is None or self.top_k >= 1, "top_k", self.top_k, "None or at least 1")
        _check(self.top_p is None or 0 < self.top_p <= 1, "top_p", self.top_p, "None or in (0, 1]")
        if self.threshold is not None and self.remasking == "entropy":
            _check(-math.inf < self.threshold <= 0, "threshold", self.threshold,
                   "None or at most 0 with entropy remasking (it compares minus the entropy)")
        else:
            _check(self.threshold is None or 0 < self.threshold <= 1, "threshold", self.threshold,
                   "None or in (0, 1]")
        _check(0 <= self.cfg_scale < math.inf, "cfg_scale", self.cfg_scale, "a finite number >= 0")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            _check(value is None or value >= 0, name, value, "None or a token id (>= 0)")

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the sampler settings next to a checkpoint (``diffusion_generation_config.json``); returns the
        file. Every ``dllm`` verb that loads the checkpoint starts from them, flags and requests override."""
        path = Path(directory) / GENERATION_CONFIG_NAME
        values = {k: v for k, v in asdict(self).items() if k not in fields_of_kind("per_call")}
        path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> DiffusionGenerationConfig:
        """The settings saved with a checkpoint (defaults when it has none), with ``overrides`` applied.

        Raises:
            ValueError: the file is not a JSON object of known fields with valid values (the message names it);
                :class:`SamplerSettingError` (not naming the file): an override refused.
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
            saved = cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
        return replace(saved, **overrides)


def fields_of_kind(*kinds: str) -> tuple[str, ...]:
    """The names of the :class:`DiffusionGenerationConfig` fields whose ``metadata["kind"]`` is among ``kinds``
    (see :data:`FIELD_KINDS`), in declaration order."""
    unknown = set(kinds) - set(FIELD_KINDS)
    if unknown:
        raise ValueError(f"unknown field kinds {sorted(unknown)}; expected some of {FIELD_KINDS}")
    return tuple(f.name for f in fields(DiffusionGenerationConfig) if f.metadata["kind"] in kinds)


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    """The fields' resolved type hints (the module's annotations are strings), computed once."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(DiffusionGenerationConfig))
    return _HINTS


def _accepts(kind: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``kind``: ``int`` excludes ``bool``; ``float`` takes an ``int``; a ``Literal``
    takes its values; a union any of its members."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(kind)
    if origin is not None:  # int | None, Optional[float]
        return any(_accepts(member, value) for member in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return isinstance(value, kind) and not isinstance(value, bool)


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(typing.get_args(kind))
    if origin is not None:
        return " or ".join(_describe(member) for member in typing.get_args(kind))
    return {type(None): "None", bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)


def _check_type(name: str, value: Any, kind: Any) -> None:
    if not _accepts(kind, value):
        raise SamplerSettingError(name, f"must be {_describe(kind)}, got {value!r}")


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SamplerSettingError(name, f"must be {expected}, got {value!r}")
