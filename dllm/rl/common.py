"""What the GRPO and DPO trainers share: the reference policy, the estimator options, trl-style metric logs."""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from dllm.core.likelihood import Estimator


def is_peft_model(model: torch.nn.Module) -> bool:
    """A peft model (LoRA): its adapters can be switched off, which gives the reference without a copy."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class ReferencePolicy:
    """The reference ``pi_ref`` of a KL or DPO term, kept as cheaply as the policy allows.

    Not needed (GRPO with ``beta = 0``): nothing is kept. A LoRA policy: the same model with its adapters switched
    off (``disable_adapter``), so no second model exists. Otherwise a frozen copy of the policy as it starts.
    """

    def __init__(self, model: torch.nn.Module, needed: bool):
        self.needed = needed
        self.copy: torch.nn.Module | None = None
        if needed and not is_peft_model(model):
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    @contextmanager
    def model(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The reference as a callable model, next to the unwrapped ``policy``; gradients off."""
        if not self.needed:
            raise RuntimeError("no reference policy was kept (beta = 0)")
        with torch.no_grad():
            if self.copy is None:
                with policy.disable_adapter():
                    yield policy
            else:
                device = next(policy.parameters()).device
                yield self.copy.to(device)


@dataclass
class ElboOptions:
    """The ELBO estimator's options (shared by ``dllm grpo --loss_type elbo`` and ``dllm dpo``)."""

    num_elbo_samples: int = field(
        default=4, metadata={"help": "K: ELBO draws per completion (times t, or masked counts), antithetic and shared "
                             "by policy, old policy and reference; each costs one forward per completion."}
    )
    elbo_estimator: Estimator = field(
        default="time", metadata={"help": "'time': t ~ U[elbo_time_eps, 1], each token masked with probability t, "
                                  "weight 1/t (MDLM); 'count': exactly l ~ U{1..n} tokens masked, weight n/l "
                                  "(LLaDA Eq. 6; lower variance).", "choices": ["time", "count"]}
    )
    elbo_time_eps: float = field(default=1e-3, metadata={"help": "Smallest t of the 'time' estimator."})


def check_elbo_options(options: ElboOptions) -> None:
    """Raises ValueError on an option out of range (TrainingArguments' checks are ValueErrors too)."""
    if options.num_elbo_samples < 1:
        raise ValueError(f"num_elbo_samples must be at least 1, got {options.num_elbo_samples}")
    if options.elbo_estimator not in ("time", "count"):
        raise ValueError(f"elbo_estimator must be 'time' or 'count', got {options.elbo_estimator!r}")
    if not 0.0 <= options.elbo_time_eps < 1.0:
        raise ValueError(f"elbo_time_eps must be in [0, 1), got {options.elbo_time_eps}")


class MetricLog:
    """Values recorded per micro-batch since the last log, averaged at the log (trl's ``_metrics``)."""

    def __init__(self):
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, value: float | torch.Tensor) -> None:
        self.values[name].append(float(value))

    def pop_means(self) -> dict[str, float]:
        """The mean of each metric (NaN values skipped) since the last call; then starts over."""
        means = {}
        for name, values in self.values.items():
            kept = [v for v in values if not math.isnan(v)]
            means[name] = sum(kept) / len(kept) if kept else float("nan")
        self.values = defaultdict(list)
        return means


LossType = Literal["elbo", "diffu_grpo"]
