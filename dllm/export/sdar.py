"""``dllm export CKPT OUT --format sdar``: a block-diffusion Qwen3 checkpoint in the layout of SDAR checkpoints.

SDAR (JetAstra/SDAR) is a Qwen3 body trained as a block-diffusion LM; SGLang serves it through its diffusion path.
The layout written here is the one these loaders read (read in the sources, not yet run on an engine here):

- SGLang ``python/sglang/srt/models/sdar.py`` (commit 060c48f709115f3b8f1573c7a00c66a457ced8a6):
  ``SDARForCausalLM`` (the ``architectures`` entry) reads ``hidden_size``, ``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim``, ``attention_bias``, ``rms_norm_eps``, ``rope_theta``, (``rope_scaling``),
  ``max_position_embeddings``, ``intermediate_size``, ``vocab_size``, ``num_hidden_layers`` and
  ``tie_word_embeddings`` from the config, and takes Qwen3's weight names (``model.layers.N.self_attn.{q,k,v,o}_proj``,
  ``q_norm``/``k_norm``, ``mlp.{gate,up,down}_proj``, the two layer norms, ``model.embed_tokens``, ``model.norm``,
  ``lm_head`` unless tied), stacking q/k/v and gate/up itself. ``rope_theta`` is written explicitly: transformers 5
  saves ``rope_parameters`` instead, and the loader would silently fall back to 10000.
- SGLang ``python/sglang/srt/dllm/config.py`` (``DllmConfig.from_server_args``): ``SDARForCausalLM`` defaults to
  block size 4 and mask id 151669 (SDAR's Qwen3 tokenizer); recent versions read ``block_size`` and
  ``mask_token_id`` from ``config.json``, every version reads ``block_size`` (and, in recent ones, ``mask_id``) from
  the ``--dllm-algorithm-config`` YAML, so both are written (``dllm_algorithm_config.yaml``).
- ``model_type`` is ``sdar`` as in SDAR's checkpoints; transformers has no such type, so the folder carries a
  three-line ``configuration_sdar.py`` (``auto_map``; a ``Qwen3Config`` under that name) for
  ``AutoConfig.from_pretrained(..., trust_remote_code=True)``, which is how SGLang reads a config.

Blocks: dllm aligns blocks to the sequence start, as SDAR's training and SGLang's prefill (whole prompt blocks, then
the block holding the prompt's end decoded with it) do. The tokenizer (with its mask token and chat template) and
dllm's sampler settings are copied.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dllm.auto import AutoModelForMaskedDiffusion, load_config, load_tokenizer
from dllm.core.models.masked_lm import block_diffusion_size, text_config
from dllm.core.sampling import GENERATION_CONFIG_NAME
from dllm.errors import UsageError
from dllm.sft.checkpoints import check_writable, refuse_model_folders

SDAR_ARCHITECTURE, SDAR_MODEL_TYPE = "SDARForCausalLM", "sdar"
ALGORITHM_CONFIG_NAME = "dllm_algorithm_config.yaml"
CONFIGURATION_CODE = '''"""SDAR's config: Qwen3's, under model_type "sdar" (written by dllm export --format sdar)."""

from transformers import Qwen3Config


class SDARConfig(Qwen3Config):
    model_type = "sdar"
'''


def sdar_config(values: dict, block_size: int, mask_token_id: int, rope_theta: float) -> dict:
    """``config.json`` of the export: the Qwen3 config ``values`` under SDAR's names (see the module docstring)."""
    return {**values, "architectures": [SDAR_ARCHITECTURE], "model_type": SDAR_MODEL_TYPE,
            "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig"}, "block_size": block_size,
            "mask_token_id": mask_token_id, "rope_theta": rope_theta}


def export_sdar(checkpoint: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the block-diffusion Qwen3 ``checkpoint`` to ``out`` in SDAR's layout; returns ``out``.

    Raises:
        UsageError: ``checkpoint`` is not a Qwen3 block-diffusion checkpoint with a mask token, or ``out`` is a
            folder with files in it and ``overwrite`` is off.
    """
    config = text_config(load_config(checkpoint))
    if config.model_type != "qwen3":
        raise UsageError(f"{checkpoint}: --format sdar exports Qwen3-backbone checkpoints (SDAR is Qwen3); this "
                         f"one is {config.model_type!r}")
    block_size = block_diffusion_size(config)
    if block_size is None:
        raise UsageError(f"{checkpoint}: not a block-diffusion checkpoint (config.json has no dllm_objective "
                         "'bd3lm'); train it with dllm sft --objective bd3lm")
    tokenizer = load_tokenizer(checkpoint)
    if tokenizer.mask_token_id is None:
        raise UsageError(f"{checkpoint}: the tokenizer has no mask token")
    refuse_model_folders(out, [checkpoint], flag="")  # never over the checkpoint it reads, whatever --overwrite
    check_writable(out, flag="")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite True to write into it")
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint)
    model.save_pretrained(out)  # the causal class's state dict: Qwen3's weight names
    tokenizer.save_pretrained(out)
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    path = out / "config.json"
    values = json.loads(path.read_text(encoding="utf-8"))
    values = sdar_config(values, block_size, tokenizer.mask_token_id, rope)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "configuration_sdar.py").write_text(CONFIGURATION_CODE, encoding="utf-8")
    (out / ALGORITHM_CONFIG_NAME).write_text(f"block_size: {block_size}\nmask_id: {tokenizer.mask_token_id}\n",
                                            encoding="utf-8")
    saved = Path(checkpoint) / GENERATION_CONFIG_NAME
    if saved.is_file():
        shutil.copyfile(saved, out / GENERATION_CONFIG_NAME)
    return out


@dataclass
class ExportArguments:
    """Options of ``dllm export`` (besides CKPT and OUT)."""

    format: str = field(default="sdar", metadata={"help": "Target layout: sdar (SDAR / SGLang's diffusion path).",
                                                  "choices": ["sdar"]})
    overwrite: bool = field(default=False, metadata={"help": "Write into an OUT folder that is not empty."})


def main(argv: list[str] | None = None) -> Path:
    """Run ``dllm export CKPT OUT --format sdar [--overwrite True]``."""
    from dllm.options import OptionParser

    parser = OptionParser((ExportArguments,), prog="dllm export", config_file=False)
    parser.add_argument("checkpoint", help="A block-diffusion checkpoint (dllm sft --objective bd3lm) of Qwen3.")
    parser.add_argument("out", help="Where the exported checkpoint goes.")
    namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = export_sdar(namespace.checkpoint, namespace.out, overwrite=namespace.overwrite)
    print(f"exported {namespace.checkpoint} as {SDAR_ARCHITECTURE} (SGLang: --dllm-algorithm-config "
          f"{out / ALGORITHM_CONFIG_NAME}): wrote {out}", file=sys.stderr)
    return out
