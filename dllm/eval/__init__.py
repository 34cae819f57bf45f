"""Evaluating a trained checkpoint.

- :mod:`~dllm.eval.exact_match`: ``dllm eval CHECKPOINT``, exact match of the sampler's answers on the demo's
  held-out tasks or on a dataset spec, optionally with the ELBO NLL of the references
  (:mod:`dllm.core.likelihood`).
- :mod:`~dllm.eval.lm_eval_adapter`: the ``dllm`` model of EleutherAI's lm-evaluation-harness (optional extra
  ``eval``: ``pip install 'dllm[eval]'``); ``python -m dllm.eval.lm_eval_adapter --model dllm ...`` runs
  lm-eval's command line with it registered.

Importing this package imports neither lm_eval nor the model code; only :mod:`~dllm.eval.lm_eval_adapter`
imports lm_eval.
"""
