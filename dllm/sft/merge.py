"""``dllm merge-lora BASE ADAPTER OUT``: fold a LoRA adapter into its base model, giving a standalone checkpoint.

    dllm merge-lora meta-llama/Meta-Llama-3-8B-Instruct outputs/sft/adapter outputs/sft-merged
    dllm merge-lora /ckpt/base outputs/sft/adapter outputs/sft --overwrite True   # beside the adapter

``dllm sft --lora True`` saves the adapter in ``OUT/adapter`` (with the tokenizer, mask token included); under
DeepSpeed/FSDP that is all it saves. Merging redoes what the recipe did before wrapping the model in LoRA (load
``BASE`` as a bidirectional masked LM, give it the tokenizer's mask token, resizing the embeddings when ``BASE``
has fewer rows), loads the adapter (with the resized embedding rows peft saves when embeddings were resized)
and merges it with ``merge_and_unload``. ``OUT`` then holds a checkpoint that
``AutoModelForMaskedDiffusion.from_pretrained`` and ``dllm sample``/``serve``/``eval`` load, whose logits equal
the adapter model's. A vision-language checkpoint (Qwen3-VL) also gets its processor (image processor and chat
template, with the adapter's tokenizer), from ADAPTER when it holds one, else from BASE, so ``AutoProcessor`` loads
``OUT`` and ``dllm sample --image`` works; a text-only BASE gets the tokenizer alone.

A block-diffusion adapter (``dllm sft --objective bd3lm --lora True``) carries its objective and block size in
``dllm_objective.json`` (an adapter folder has no ``config.json``); the merged ``config.json`` gets them
(``dllm_objective``, ``dllm_block_size``), so every verb decodes ``OUT`` block by block with its exact cache. An
adapter saved before that file existed is recognised by its sampler defaults (``cache="block"`` and their block
size). ``OUT`` gets the adapter's sampler defaults, or, for a block-diffusion adapter without them, the defaults
such a checkpoint saves (``cache="block"``, its block size).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from dllm.auto import AutoModelForMaskedDiffusion, load_processor, load_tokenizer
from dllm.core.models.masked_lm import add_mask_token
from dllm.core.models.masked_lm import set_block_diffusion
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig, generation_defaults
from dllm.core.trainers.bd3lm_trainer import read_objective_file
from dllm.errors import UsageError
from dllm.options import DTYPES, torch_dtype
from dllm.sft.checkpoints import check_writable, refuse_model_folders

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


@dataclass
class MergeArguments:
    """Options of ``dllm merge-lora`` (besides BASE, ADAPTER and OUT)."""

    overwrite: bool = field(default=False, metadata={
        "help": "Write into an OUT folder that is not empty (files of the same names are replaced; nothing is "
                "deleted)."})
    dtype: str = field(default="auto", metadata={
        "help": "Dtype to load BASE in and save OUT with (auto keeps BASE's).",
        "choices": list(DTYPES)})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run BASE's own Python code (auto_map in config.json); review it first."})


def check_adapter(adapter: str | Path) -> dict:
    """The adapter's ``adapter_config.json``.

    Raises:
        UsageError: no such folder, or a folder that is not a peft adapter (no readable ``adapter_config.json``).
    """
    path = Path(adapter)
    if not path.is_dir():
        raise UsageError(f"{adapter}: no such adapter folder")
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise UsageError(f"{adapter}: not a peft adapter folder (no {ADAPTER_CONFIG}); give the adapter folder "
                         "dllm sft --lora True saves, OUT/adapter")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{config_file}: not a peft adapter config ({err})") from err
    if not isinstance(config, dict) or "peft_type" not in config:
        raise UsageError(f"{config_file}: not a peft adapter config (no peft_type)")
    return config


def check_output(out: str | Path, adapter: str | Path, base: str, overwrite: bool) -> None:
    """Refuse, before any work, an OUT that cannot be written, that is BASE or ADAPTER or holds BASE (whatever
    ``overwrite`` says: saving would overwrite the model being read), or that is a folder with contents (other
    than ADAPTER, which merging writes beside: ``dllm merge-lora BASE OUT/adapter OUT``) unless ``overwrite``."""
    out_path, adapter_path = Path(out), Path(adapter).resolve()
    if out_path.resolve() == adapter_path:
        raise UsageError(f"{out}: is ADAPTER, the model being read; write the merged model to another folder")
    refuse_model_folders(out, [base], flag="")
    check_writable(out, flag="")
    contents = [p for p in out_path.iterdir() if p.resolve() != adapter_path] if out_path.is_dir() else []
    if contents and not overwrite:
        raise UsageError(f"{out}: exists and is not empty; choose a new folder or pass --overwrite True "
                         "(files of the same names are replaced)")


def note_other_base(adapter_config: dict, adapter: Path, base: str) -> None:
    """Log one line when BASE is not the model the adapter names (``base_model_name_or_path``): legitimate for a
    copy of it, and :func:`check_adapter_fits` refuses a model the adapter does not fit."""
    named = adapter_config.get("base_model_name_or_path")
    if not named:
        return
    same = (Path(named).resolve() == Path(base).resolve() if Path(named).exists() and Path(base).exists()
            else named == base)
    if not same:
        logger.warning("%s was trained from %s (its base_model_name_or_path); merging it into %s instead", adapter,
                       named, base)


def check_adapter_fits(peft_model: Any, adapter: Path, base: str) -> None:
    """Refuse an adapter whose LoRA weights and BASE's LoRA layers do not pair up one to one: weights with no layer
    (BASE has fewer layers or other module names) would be dropped, layers with no weights would merge nothing,
    and peft only warns about either.

    Raises:
        UsageError: naming how many weights or layers are unpaired and the first of each.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        return  # a .bin adapter: its keys cannot be read without loading it whole
    with safe_open(str(weights), framework="pt") as f:
        saved = {key for key in f.keys() if "lora_" in key}  # not the resized embedding rows peft saves too
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    unplaced, unfilled = sorted(saved - expected), sorted(k for k in expected - saved if "lora_" in k)
    problems = [f"{len(unplaced)} adapter weights have no layer in BASE (first: {unplaced[0]})"] if unplaced else []
    if unfilled:
        problems.append(f"{len(unfilled)} of BASE's LoRA layers have no adapter weights (first: {unfilled[0]})")
    if problems:
        raise UsageError(f"{adapter}: does not fit BASE {base}: {'; '.join(problems)}; merge it into the base it "
                         "was trained from")


def _embedding_rows_saved(model: PreTrainedModel, adapter: Path) -> bool:
    """Whether the adapter holds the input embedding matrix (peft saves it when the embeddings were resized)."""
    from safetensors import safe_open

    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        return True  # a .bin adapter: cannot look inside cheaply; peft reports a mismatch itself
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding)
    with safe_open(str(weights), framework="pt") as f:
        return any(key.endswith(f"{name}.weight") for key in f.keys())


def has_image_processor(name_or_path: str | Path) -> bool:
    """Whether a checkpoint (folder or hub id) ships an image processor: ``preprocessor_config.json``, or
    ``processor_config.json`` with an ``image_processor`` entry (where transformers 5 saves it)."""
    from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, cached_file

    def find(name: str) -> str | None:
        if Path(name_or_path).is_dir():
            path = Path(name_or_path) / name
            return str(path) if path.is_file() else None
        return cached_file(str(name_or_path), name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)

    if find(IMAGE_PROCESSOR_NAME) is not None:
        return True
    processor_file = find(PROCESSOR_NAME)
    return processor_file is not None and "image_processor" in json.loads(Path(processor_file).read_text())


def _load_processor(adapter: Path, base: str, tokenizer: Any, trust_remote_code: bool) -> Any:
    """The processor to save beside the merged model (ADAPTER's, else BASE's) carrying ``tokenizer``, the one the
    adapter was trained with (mask token included); None when neither has an image processor."""
    source = next((str(s) for s in (adapter, base) if has_image_processor(s)), None)
    if source is None:
        return None
    processor = load_processor(source, trust_remote_code)
    processor.tokenizer = tokenizer
    return processor


def adapter_block_size(adapter: Path) -> int | None:
    """The block size of a block-diffusion adapter, ``None`` for an MDLM one: from its ``dllm_objective.json``, or,
    for an adapter saved without it, from its sampler defaults when they name the block cache.

    Raises:
        UsageError: a ``dllm_objective.json`` or sampler defaults that cannot be read.
    """
    try:
        block_size = read_objective_file(adapter)
        if block_size is not None or not (adapter / GENERATION_CONFIG_NAME).is_file():
            return block_size
        defaults = DiffusionGenerationConfig.from_pretrained(adapter)
    except ValueError as err:  # json's errors and SamplerSettingError are ValueErrors
        raise UsageError(f"{adapter}: {err}") from err
    return defaults.block_size if defaults.cache == "block" else None


def save_sampler_defaults(adapter: Path, out: Path, merged: PreTrainedModel) -> None:
    """Copy the adapter's sampler defaults to ``out``; without them, a block-diffusion model gets the defaults its
    checkpoint would have saved (its exact block cache and block size)."""
    saved = adapter / GENERATION_CONFIG_NAME  # the sampler defaults dllm sft saves beside the adapter
    if saved.is_file():
        if saved.resolve() != (out / GENERATION_CONFIG_NAME).resolve():
            shutil.copyfile(saved, out / GENERATION_CONFIG_NAME)
    elif adapter_block_size(adapter) is not None:
        generation_defaults(merged.config).save_pretrained(out)


def merge_lora(base: str, adapter: str | Path, out: str | Path, *, overwrite: bool = False, dtype: str = "auto",
               trust_remote_code: bool = False) -> PreTrainedModel:
    """Merge ``adapter`` into ``base`` and save the model and tokenizer (and the processor of a vision-language
    checkpoint) to ``out``; returns the merged model.

    Raises:
        UsageError: a missing BASE or ADAPTER, an ADAPTER that is not a peft adapter or does not fit BASE (shapes,
            or weights and layers that do not pair up), an OUT that cannot be written, is BASE or ADAPTER, or is
            not empty (without ``overwrite``), or an adapter without the resized embedding rows its
            tokenizer's mask token needs.
    """
    from peft import PeftModel

    adapter_config = check_adapter(adapter)
    check_output(out, adapter, base, overwrite)
    adapter = Path(adapter)
    note_other_base(adapter_config, adapter, base)
    block_size = adapter_block_size(adapter)  # before any loading: a malformed file is refused first
    has_tokenizer = any((adapter / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = load_tokenizer(str(adapter) if has_tokenizer else base, trust_remote_code)
    model = AutoModelForMaskedDiffusion.from_pretrained(
        base, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    processor = _load_processor(adapter, base, tokenizer, trust_remote_code)  # after BASE is known to exist
    rows = model.get_input_embeddings().weight.shape[0]
    add_mask_token(model, tokenizer)  # as the recipe did before wrapping the model in LoRA
    if model.get_input_embeddings().weight.shape[0] != rows and not _embedding_rows_saved(model, adapter):
        raise UsageError(f"{adapter}: BASE {base} has {rows} embedding rows, the adapter's tokenizer needs "
                         f"{len(tokenizer)}, and the adapter holds no embedding weights, so the mask token's row it "
                         "was trained with is lost; merge with the base it was trained from")
    try:
        with warnings.catch_warnings():  # check_adapter_fits refuses what peft would only warn about
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except RuntimeError as err:  # torch's load_state_dict "size mismatch"
        if "size mismatch" not in str(err):
            raise
        raise UsageError(f"{adapter}: does not fit BASE {base} ({' '.join(str(err).split())[:300]})") from err
    check_adapter_fits(peft_model, adapter, base)
    merged = peft_model.merge_and_unload()
    if block_size is not None:  # as the trainer marked the model it trained
        set_block_diffusion(merged.config, block_size)
    Path(out).mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    (processor if processor is not None else tokenizer).save_pretrained(out)  # a processor saves its tokenizer
    save_sampler_defaults(adapter, Path(out), merged)
    return merged


def main(argv: list[str] | None = None) -> PreTrainedModel:
    """Run ``dllm merge-lora BASE ADAPTER OUT [--overwrite True] [--dtype ...]``."""
    from dllm.options import OptionParser

    parser = OptionParser((MergeArguments,), prog="dllm merge-lora", config_file=False)
    parser.add_argument("base", help="The base checkpoint the adapter was trained from (folder or hub id).")
    parser.add_argument("adapter", help="The adapter folder (dllm sft --lora True writes OUT/adapter).")
    parser.add_argument("out", help="Where the merged checkpoint goes (a new or empty folder).")
    namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
    merged = merge_lora(namespace.base, namespace.adapter, namespace.out, overwrite=namespace.overwrite,
                        dtype=namespace.dtype, trust_remote_code=namespace.trust_remote_code)
    print(f"merged {namespace.adapter} into {namespace.base}: wrote {namespace.out}", file=sys.stderr)
    return merged
