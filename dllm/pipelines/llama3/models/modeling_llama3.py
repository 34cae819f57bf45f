"""LLaMA 3 as a bidirectional masked diffusion LM."""

from transformers import LlamaForCausalLM

from dllm.core.models import BidirectionalMaskedLMMixin


class Llama3ForMaskedLM(BidirectionalMaskedLMMixin, LlamaForCausalLM):
    """``LlamaForCausalLM`` with bidirectional attention, returning ``MaskedLMOutput``.

    ``Llama3ForMaskedLM.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct")`` loads an ordinary causal
    checkpoint; the saved config carries ``is_causal: false``.
    """

    plain_head = True  # LlamaForCausalLM.forward: self.model -> lm_head (transformers 5.24)

