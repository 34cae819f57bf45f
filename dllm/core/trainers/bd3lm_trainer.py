"""``BD3LMTrainer``: block diffusion (BD3-LMs, arXiv 2503.09573), MDLM's trainer with one step overridden.

A block-diffusion LM splits a sequence into blocks of ``block_size`` positions: inside a block it is a masked
diffusion model (bidirectional), from block to block it is autoregressive. Its negative ELBO is the sum over blocks
of MDLM's bound for each block given the clean blocks before it (BD3-LMs Eq. 7), so everything of
:class:`~dllm.core.trainers.mdlm_trainer.MDLMTrainer` is kept (``sample_t``, ``mask_tokens``, the ELBO weight,
token/sequence normalisation, packing's per-document ``t``, the noise seeding) and only the denoising forward
(:meth:`BD3LMTrainer._denoise`) changes: one pass over the noisy and the clean sequence side by side,
``x_t ⊕ x_0`` [B, 2L], with the vectorised mask of BD3-LMs (:func:`~dllm.core.models.masked_lm.block_causal_rule`):
noisy block ``k`` sees itself and the clean blocks before it, clean blocks see the clean blocks up to their own.
The clean copy has the noisy copy's position ids, and no output head (the masked-only head runs on the noisy
copy's masked positions alone).

Choices, stated once:

- **Blocks are aligned to the sequence start** (to each packed document's start), as BD3-LMs and SDAR do: block of
  position ``p`` is ``p // block_size``. The prompt is never noised (its labels are -100), so its whole blocks are
  clean context and the block holding its last tokens is the first one predicted, its prompt tokens given. The
  sampler aligns its blocks the same way, and serving engines (SGLang's SDAR path) do too.
- **One noise level ``t`` per sequence** (per document when packed), shared by its blocks. BD3-LMs draws one per
  block; both give an unbiased estimate of the same bound (it is a sum over blocks of per-block expectations, each
  of which holds whatever the joint law of the blocks' ``t``), per block only lowers the variance. Per sequence
  keeps MDLM's antithetic grid, per-document ``t`` and sequence normalisation as they are, and makes a single block
  covering the sequence the MDLM loss exactly (same draws, same masks).
- **Attention kernels**: the mask is built by transformers' own builder from mask functions, so eager, SDPA and
  flex attention take it; flash-attention takes no such mask and is refused in one line.
- **A LoRA adapter saved alone** (``adapter_config.json`` and the LoRA weights, no ``config.json``: what DeepSpeed
  and FSDP runs keep) gets :data:`OBJECTIVE_FILE` beside it, the objective and block size its ``config.json``
  would carry, so ``dllm merge-lora`` marks the merged checkpoint block-diffusion (:func:`read_objective_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainingArguments

from dllm.core.models.masked_lm import (
    BLOCK_DIFFUSION,
    BLOCK_SIZE_KEY,
    OBJECTIVE_KEY,
    block_diffusion_forward,
    set_block_diffusion,
)
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Written beside a LoRA adapter (which has no config.json): the config.json keys that make the model block-diffusion.
OBJECTIVE_FILE = "dllm_objective.json"


def write_objective_file(folder: str | Path, block_size: int) -> Path:
    """Write :data:`OBJECTIVE_FILE` into ``folder``: ``{"dllm_objective": "bd3lm", "dllm_block_size": B}``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / OBJECTIVE_FILE
    path.write_text(json.dumps({OBJECTIVE_KEY: BLOCK_DIFFUSION, BLOCK_SIZE_KEY: block_size}, indent=2) + "\n",
                    encoding="utf-8")
    return path


def read_objective_file(folder: str | Path) -> int | None:
    """The block size :data:`OBJECTIVE_FILE` in ``folder`` records; ``None`` when there is no such file.

    Raises:
        ValueError: the file is not that JSON object (names the file and what was wrong).
    """
    path = Path(folder) / OBJECTIVE_FILE
    if not path.is_file():
        return None
    try:
        mark = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    block_size = mark.get(BLOCK_SIZE_KEY) if isinstance(mark, dict) else None
    if not isinstance(mark, dict) or mark.get(OBJECTIVE_KEY) != BLOCK_DIFFUSION or isinstance(block_size, bool) \
            or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{path}: expected {{\"{OBJECTIVE_KEY}\": \"{BLOCK_DIFFUSION}\", \"{BLOCK_SIZE_KEY}\": "
                         f"<positive integer>}}, got {json.dumps(mark)[:200]}")
    return block_size


@dataclass
class BD3LMConfig(MDLMConfig):
    """:class:`MDLMConfig` plus the block size; saved in the model's ``config.json`` (``dllm_objective = "bd3lm"``,
    ``dllm_block_size``), so every verb that loads the checkpoint decodes it block by block."""

    block_size: int = field(
        default=32,
        metadata={"help": "Block diffusion: positions per block (blocks counted from the sequence start; the "
                  "model is bidirectional inside a block, causal from block to block)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")


class BD3LMTrainer(MDLMTrainer):
    """Supervised fine-tuning with the block-diffusion ELBO; ``args`` is a :class:`BD3LMConfig`.

    The model's config is marked block-diffusion at construction (:func:`~dllm.core.models.set_block_diffusion`),
    so the saved checkpoint records its objective and block size. Everything else is :class:`MDLMTrainer`'s.
    """

    objective = "bd3lm"

    def __init__(self, model: PreTrainedModel | torch.nn.Module | None = None, args: TrainingArguments | None = None,
                 **kwargs: Any):
        if not isinstance(args, BD3LMConfig):
            raise TypeError(f"BD3LMTrainer takes a BD3LMConfig (it carries block_size), got {type(args).__name__}")
        super().__init__(model=model, args=args, **kwargs)
        set_block_diffusion(self._base_model().config, args.block_size)

    def _base_model(self) -> torch.nn.Module:
        unwrapped = self.accelerator.unwrap_model(self.model)
        return unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save; a LoRA model (whose adapter folder gets no ``config.json``) also gets
        :data:`OBJECTIVE_FILE`, on the process that writes (also in every ``checkpoint-N``)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save and self._base_model() is not self.accelerator.unwrap_model(self.model):
            write_objective_file(output_dir if output_dir is not None else self.args.output_dir, self.args.block_size)

    def _denoise(self, model: torch.nn.Module, input_ids: torch.Tensor, noisy_ids: torch.Tensor,
                 masked: torch.Tensor, inputs: dict[str, Any], *, select: bool) -> Any:
        """One forward over ``x_t ⊕ x_0`` with the block-diffusion mask
        (:func:`~dllm.core.models.masked_lm.block_diffusion_forward`): logits of the noisy copy only, [N, V] at
        ``masked`` when ``select`` (the noisy copy then starts at the first block holding a masked position), else
        [B, L, V]."""
        return block_diffusion_forward(model, self._base_model(), noisy_ids, input_ids, inputs,
                                       masked if select else None)
