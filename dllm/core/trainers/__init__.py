"""Trainers: :class:`MDLMTrainer` and its config."""

from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer

__all__ = ["MDLMConfig", "MDLMTrainer"]
