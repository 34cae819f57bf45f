"""Post-training with rewards (:mod:`dllm.rl.grpo`) and preferences (:mod:`dllm.rl.dpo`); the estimators and
losses are in :mod:`dllm.core.policy`."""
