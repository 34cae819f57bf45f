"""Qwen3-VL's own training options, parsed beside the SFT recipe's (``dllm sft qwen3_vl --help``); a light module, so
the family table (:data:`dllm.auto.FAMILIES`) can name it without importing the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Qwen3VLOptions:
    """Qwen3-VL's options beside the recipe's (``dllm sft qwen3_vl --help``)."""

    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower (without its mergers)."})
    freeze_merger: bool = field(default=True, metadata={"help": "Freeze the merger and the DeepStack mergers."})
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths resolve "
                                                                   "against (paths in data files already do)."})
