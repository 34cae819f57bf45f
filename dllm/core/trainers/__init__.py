"""Trainers: :class:`MDLMTrainer`, :class:`BD3LMTrainer` and their configs.

``OBJECTIVES`` maps each training objective's name (``dllm sft --objective``) to its config and trainer class.
"""

from dllm.core.trainers.bd3lm_trainer import BD3LMConfig, BD3LMTrainer
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer

OBJECTIVES: dict[str, tuple[type[MDLMConfig], type[MDLMTrainer]]] = {
    "mdlm": (MDLMConfig, MDLMTrainer),
    "bd3lm": (BD3LMConfig, BD3LMTrainer),
}

__all__ = ["OBJECTIVES", "BD3LMConfig", "BD3LMTrainer", "MDLMConfig", "MDLMTrainer"]
