"""Using a trained checkpoint: ``dllm sample`` (prompts in, completions out) and ``dllm serve`` (an
OpenAI-compatible HTTP server).

- :mod:`~dllm.inference.loading`: one loader for every verb (checkpoint, tokenizer, the sampler settings saved
  with it) and the command-line options derived from :class:`~dllm.core.sampling.DiffusionGenerationConfig`.
- :mod:`~dllm.inference.engine`: prompts to token ids, one sampler call per batch, completions with their ids,
  finish reason and per-block snapshots.
- :mod:`~dllm.data.images`: user-supplied images (paths, data URLs, PIL images) to PIL images, with
  one-line errors; never fetches a URL.
- :mod:`~dllm.inference.sample`: the ``dllm sample`` verb.
- :mod:`~dllm.inference.batching`: concurrent requests with equal sampler settings share one sampler call.
- :mod:`~dllm.inference.protocol` and :mod:`~dllm.inference.server`: the OpenAI request and response shapes
  and the FastAPI app behind ``dllm serve`` (optional extra ``serve``: fastapi, uvicorn).

Importing this package imports neither fastapi nor uvicorn; only :mod:`~dllm.inference.protocol` and
:mod:`~dllm.inference.server` do.
"""
