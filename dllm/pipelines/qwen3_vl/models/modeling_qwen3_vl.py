"""Qwen3-VL as a bidirectional masked diffusion LM (the language model denoises; the vision tower encodes).

Layout of ``Qwen3VLForConditionalGeneration`` in transformers (5.x)::

    model.visual                         vision tower (patch embed, position embed, blocks)
    model.visual.merger                  projects the last vision layer to the LM width
    model.visual.deepstack_merger_list   DeepStack mergers: project intermediate vision layers into early LM layers
    model.language_model                 the text decoder (made bidirectional here)
    lm_head

Only the *text* config becomes non-causal (the vision tower's attention is already full within an image).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import Qwen3VLForConditionalGeneration

from dllm.core.models import BidirectionalMaskedLMMixin

# Parameter-name prefixes (relative to Qwen3VLForConditionalGeneration) of the vision components.
VISUAL_PREFIX = "model.visual."
MERGER_PREFIXES = ("model.visual.merger.", "model.visual.deepstack_merger_list.")


def _is_merger(name: str) -> bool:
    return name.startswith(MERGER_PREFIXES)


class Qwen3VLForMaskedLM(BidirectionalMaskedLMMixin, Qwen3VLForConditionalGeneration):
    """``Qwen3VLForConditionalGeneration`` with a bidirectional language model, returning ``MaskedLMOutput``.

    ``forward`` takes the processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``, optional 3-D ``position_ids``); ``labels`` are never passed to
    upstream's causal (shifted) loss: with labels the loss is the plain unshifted cross-entropy.

    Example::

        model = Qwen3VLForMaskedLM.from_pretrained("Qwen/Qwen3-VL-2B-Instruct", dtype="auto")
        # vision tower and mergers frozen; the language model trains
    """

    plain_head = True  # Qwen3VLForConditionalGeneration.forward: self.model (vision included) -> lm_head


    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        *args,
        freeze_vision: bool = True,
        freeze_merger: bool = True,
        **kwargs,
    ) -> Qwen3VLForMaskedLM:
        """Load a Qwen3-VL checkpoint (hub id or folder) and freeze the vision components.

        Args:
            freeze_vision: freeze the vision tower (patch/position embeddings and blocks), not its mergers.
            freeze_merger: freeze the merger and the DeepStack mergers.
            kwargs: passed to ``PreTrainedModel.from_pretrained`` (``dtype``, ``attn_implementation``, ...).
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.freeze_vision_components(freeze_vision=freeze_vision, freeze_merger=freeze_merger)
        return model

    def vision_tower_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of the vision tower without its mergers."""
        return ((n, p) for n, p in self.named_parameters() if n.startswith(VISUAL_PREFIX) and not _is_merger(n))

    def merger_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of the merger and the DeepStack mergers."""
        return ((n, p) for n, p in self.named_parameters() if _is_merger(n))

    def freeze_vision_components(self, freeze_vision: bool = True, freeze_merger: bool = True) -> None:
        """Set ``requires_grad`` of the vision components: each flag states whether that group is frozen
        (``False`` makes it trainable again); the language model and ``lm_head`` are left as they are.

        Args:
            freeze_vision: the vision tower (``model.visual`` without its mergers).
            freeze_merger: ``model.visual.merger`` and ``model.visual.deepstack_merger_list``.
        """
        for _, param in self.vision_tower_parameters():
            param.requires_grad_(not freeze_vision)
        for _, param in self.merger_parameters():
            param.requires_grad_(not freeze_merger)
