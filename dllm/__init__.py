"""dllm: turn Hugging Face language models into masked diffusion language models (MDLM, arXiv 2406.07524).

Importing ``dllm`` is cheap: it imports no optional extra (deepspeed, lm-eval, peft) and touches no network.
"""

__version__ = "0.1.0"
