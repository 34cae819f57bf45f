"""dllm: turn Hugging Face language models into masked diffusion language models (MDLM, arXiv 2406.07524).

Dependencies: torch, transformers, accelerate, datasets, peft, numpy, tqdm and rich are required (peft is
imported only when LoRA is asked for). Optional extras: ``deepspeed`` (ZeRO-2/3 training), ``plot``
(matplotlib, the demo's loss plot), ``vision`` (torchvision and pillow, Qwen3-VL), ``serve`` (FastAPI and
uvicorn, ``dllm serve``), ``web`` (gradio, ``dllm playground``) and ``eval`` (lm-eval). Importing ``dllm``
imports none of the optional packages, nor peft, and touches no network.

Entry points: :class:`dllm.auto.AutoModelForMaskedDiffusion` (load any decoder as a bidirectional masked LM),
:class:`dllm.core.trainers.mdlm_trainer.MDLMTrainer` (the diffusion objective on ``transformers.Trainer``),
:func:`dllm.data.utils.load_sft_dataset`, :mod:`dllm.sft.recipe` (``dllm sft``), :mod:`dllm.core.sampling` (the
sampler) and the ``dllm`` command (sft, demo, sample, chat, playground, serve, eval, merge-lora).
"""

__version__ = "0.1.0"
