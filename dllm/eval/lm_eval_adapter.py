"""The ``dllm`` model of EleutherAI's lm-evaluation-harness (optional extra ``eval``: ``pip install 'dllm[eval]'``).

    dllm lm-eval --model_args pretrained=outputs/demo --tasks TASK      # --model dllm is the default
    dllm lm-eval run --model dllm --model_args pretrained=CKPT,num_samples=64,steps=32,threshold=0.9 \\
        --tasks TASK --include_path my_tasks/ --output_path results/
    python -m dllm.eval.lm_eval_adapter ...                               # the same, without the dllm command

How lm-eval finds the model. ``--model NAME`` is looked up in lm-eval's model registry, which a class joins when
the module holding its ``@register_model`` decorator is imported. lm-eval 0.4.x up to 0.4.13 (the newest release
when this was written) imports only its own model modules, so a bare ``lm_eval --model dllm`` fails with "no
model for this name found". Two ways work:

* ``dllm lm-eval ARGS`` (or ``python -m dllm.eval.lm_eval_adapter ARGS``): imports this module (registering
  ``dllm``), then runs lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) with ``ARGS`` (``--model
  dllm`` added when no ``--model`` is given), so every lm-eval flag works as documented.
* from Python: ``import dllm.eval.lm_eval_adapter`` before ``lm_eval.simple_evaluate(model="dllm", ...)``, or
  hand it the model itself, ``lm_eval.simple_evaluate(model=DiffusionLM(pretrained=CKPT, threshold=0.9), ...)``
  (any lm-eval version).

dllm also declares the entry point ``dllm = "dllm.eval.lm_eval_adapter:DiffusionLM"`` in the ``lm_eval.models``
group (``pyproject.toml``), the plugin interface of later lm-eval versions (upstream pull request 4013): with
such a version, installing dllm is enough for ``lm_eval --model dllm``.

``--model_args`` (``key=value,...``): ``pretrained`` (checkpoint folder or hub id, required); ``device``,
``dtype``, ``trust_remote_code``; ``num_samples`` (Monte-Carlo draws per likelihood, 32), ``estimator``
(``time`` or ``count``), ``seed`` (0); ``add_bos_token`` (prepend BOS to every context; off, since a chat
template writes its own); ``greedy_check`` (compute ``is_greedy``, on); ``max_length`` (default: the config's
``max_position_embeddings``); and any :class:`~dllm.core.sampling.DiffusionGenerationConfig` field (``steps``,
``block_size``, ``remasking``, ...), overriding the checkpoint's saved sampler settings.

The requests:

* ``generate_until``: the context as lm-eval renders it (through the chat template with
  ``--apply_chat_template``), tokenized as is; answered by the sampler with ``gen_length = max_gen_toks`` (the
  saved ``gen_length`` when the task sets none; ``steps`` capped at it), cut at the first EOS and at the first
  ``until`` string. ``temperature``, ``top_k`` and ``top_p`` in the task's ``generation_kwargs`` override the
  sampler's; ``do_sample: false`` forces temperature 0.
* ``loglikelihood``: minus the ELBO bound on ``-log p(continuation | context)`` in nats
  (:func:`dllm.core.likelihood.elbo_nll`): an estimate of a lower bound on the log-likelihood, with Monte-Carlo
  noise (raise ``num_samples`` for ranking close choices). ``is_greedy``: whether the sampler at temperature 0,
  one token per step, fills exactly the continuation's positions with the continuation.
* ``loglikelihood_rolling``: the same bound for the whole text with an empty prompt; a text longer than
  ``max_length`` is scored in chunks of ``max_length // 2`` tokens, each given the tokens before it that fit
  (:func:`rolling_windows`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, fields, replace
from typing import Any

import torch

from dllm.core.likelihood import elbo_nll
from dllm.core.sampling import DiffusionGenerationConfig, infill, left_pad
from dllm.inference.engine import Engine, cut_at_stop
from dllm.inference.loading import CheckpointArguments, load_checkpoint

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models first: its registry fills lazily only when empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # the optional extra is missing
    raise ImportError("dllm.eval.lm_eval_adapter needs lm-evaluation-harness: pip install 'dllm[eval]'") from err

if __name__ == "__main__":
    # `python -m` runs this file as `__main__`: run the importable module instead, so that the model is registered
    # once and under the name the entry point gives (dllm.eval.lm_eval_adapter:DiffusionLM), not as __main__'s.
    from dllm.eval.lm_eval_adapter import main as _main

    sys.exit(_main())

logger = logging.getLogger(__name__)
SAMPLER_FIELDS = frozenset(f.name for f in fields(DiffusionGenerationConfig))
# generation_kwargs keys that are not sampler fields but are understood here.
_GENERATION_KEYS = ("until", "max_gen_toks", "do_sample")


def rolling_windows(ids: list[int], max_length: int, prefix: list[int] | None = None
                    ) -> list[tuple[list[int], list[int]]]:
    """``(context, chunk)`` pairs that score every token of ``ids`` once within ``max_length`` tokens a row.

    A text that fits is one pair (``prefix``, ``ids``). Otherwise chunks of ``max_length // 2`` tokens, each with
    the tokens before it (``prefix`` included) that fit as its context.
    """
    prefix = list(prefix or [])
    if len(prefix) + len(ids) <= max_length:
        return [(prefix, list(ids))]
    size = max(max_length // 2, 1)
    windows = []
    for start in range(0, len(ids), size):
        chunk = list(ids[start:start + size])
        context = (prefix + list(ids[:start]))[max(len(prefix) + start - (max_length - len(chunk)), 0):]
        windows.append((context, chunk))
    return windows


def _available(device: str | None) -> str | None:
    """``device``, or the default (cuda if available) when it names CUDA on a machine without it: lm-eval's
    command line passes ``cuda:0`` unless ``--device`` says otherwise."""
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("dllm: device %s requested but CUDA is not available; using cpu", device)
        return "cpu"
    return device


@register_model("dllm")
class DiffusionLM(LM):
    """A dllm checkpoint as an lm-eval model: the sampler for generation, the ELBO for likelihoods."""

    def __init__(self, pretrained: str, batch_size: int | str | None = 16, device: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False, num_samples: int = 32, estimator: str = "time",
                 seed: int = 0, add_bos_token: bool = False, greedy_check: bool = True, max_length: int | None = None,
                 max_batch_size: int | None = None, **sampler: Any):
        super().__init__()
        unknown = sorted(set(sampler) - SAMPLER_FIELDS)
        if unknown:
            raise ValueError(f"--model_args: unknown option(s) {unknown} for model dllm; sampler options are "
                             f"{sorted(SAMPLER_FIELDS)}")
        loaded = load_checkpoint(pretrained, CheckpointArguments(device=_available(device), dtype=dtype,
                                                                 trust_remote_code=trust_remote_code), **sampler)
        self.pretrained, self.model, self.tokenizer = pretrained, loaded.model, loaded.tokenizer
        self.engine = Engine(loaded.model, loaded.tokenizer, loaded.generation_config)
        # lm-eval passes "auto" / "auto:N" for its own batch-size search, which has no meaning here.
        self.batch_size = 16 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)
        self.num_samples, self.estimator, self.seed = int(num_samples), estimator, int(seed)
        self.add_bos_token, self.greedy_check = bool(add_bos_token), bool(greedy_check)
        self.max_length = int(max_length or getattr(loaded.model.config, "max_position_embeddings", None) or 2048)
        self._device = self.engine.device

    @property
    def config(self) -> DiffusionGenerationConfig:
        """The sampler settings: the checkpoint's, with the ``--model_args`` overrides and the token ids."""
        return self.engine.config

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- tokens ---------------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _prefix(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.add_bos_token and bos is not None else []

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split as lm-eval's own models split them: trailing spaces of the context
        move to the continuation, the pair is tokenized whole, and the context's token count marks the split."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self._prefix() + self._encode(context)
        whole = self._prefix() + self._encode(context + continuation)
        answer = whole[len(context_ids):][-self.max_length:]
        return context_ids[max(len(context_ids) + len(answer) - self.max_length, 0):], answer

    # ---- requests -------------------------------------------------------------------------------------------------
    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[DiffusionGenerationConfig, list[str]]:
        """The sampler config and stop strings for one request's ``generation_kwargs``."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        overrides = {k: v for k, v in kwargs.items() if k in SAMPLER_FIELDS}
        ignored = sorted(set(kwargs) - SAMPLER_FIELDS - set(_GENERATION_KEYS))
        if ignored:
            logger.warning("dllm: ignoring generation_kwargs %s (not sampler options)", ignored)
        if kwargs.get("do_sample") is False:
            overrides["temperature"] = 0.0
        gen_length = int(kwargs.get("max_gen_toks") or self.config.gen_length)
        config = replace(self.config, **overrides, gen_length=gen_length)
        if config.steps is not None and config.steps > gen_length:
            config = replace(config, steps=gen_length)
        return config, until

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Answer each ``(context, generation_kwargs)`` with the sampler, cut at its stop strings."""
        results: list[str] = [""] * len(requests)
        groups: dict[tuple, tuple[DiffusionGenerationConfig, list[tuple[int, list[int], list[str]]]]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            config, until = self._generation_settings(gen_kwargs)
            prompt = (self._prefix() + self._encode(context))[-max(self.max_length - config.gen_length, 1):]
            key = tuple(sorted(asdict(config).items()))  # requests with equal settings share sampler calls
            groups.setdefault(key, (config, []))[1].append((index, prompt, until))
        for config, items in groups.values():
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                completions = self.engine.run([prompt for _, prompt, _ in batch], config)
                for (index, _, until), completion in zip(batch, completions):
                    results[index] = cut_at_stop(self.engine.decode(completion.ids), until)[0]
                    self.cache_hook.add_partial("generate_until", requests[index].args, results[index])
        return results

    def _nll(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        bound = elbo_nll(self.model, [c for c, _ in pairs], [a for _, a in pairs], self.config.mask_token_id,
                         num_samples=self.num_samples, estimator=self.estimator, seed=self.seed,
                         batch_size=self.batch_size, pad_token_id=self.config.pad_token_id)
        return bound.nll.tolist()

    @torch.no_grad()
    def _is_greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether the sampler at temperature 0, one token per step (low confidence first), fills the
        continuation's positions after the context with exactly the continuation."""
        config = replace(self.config, temperature=0.0, remasking="low_confidence", steps=None, block_size=None,
                         threshold=None, cfg_scale=0.0, cache="none", record_history=False, progress=False)
        mask_id, greedy = config.mask_token_id, []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start:start + self.batch_size]
            ids, attention = left_pad([c + [mask_id] * len(a) for c, a in batch], config.pad_token_id)  # [B, T]
            filled = infill(self.model, ids.to(self.engine.device), config,
                            attention_mask=attention.to(self.engine.device)).sequences.cpu()
            greedy += [row[len(row) - len(a):].tolist() == a for row, (_, a) in zip(filled, batch)]
        return greedy

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(-ELBO NLL of the continuation given the context, is_greedy)`` per ``(context, continuation)``."""
        pairs = [self._encode_pair(*request.args) for request in requests]
        greedy = self._is_greedy(pairs) if self.greedy_check else [False] * len(pairs)
        results = [(-nll, is_greedy) for nll, is_greedy in zip(self._nll(pairs), greedy)]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Minus the ELBO NLL of each whole text (empty prompt; chunked past ``max_length``, see
        :func:`rolling_windows`)."""
        windows, owners = [], []
        for index, request in enumerate(requests):
            for window in rolling_windows(self._encode(request.args[0]), self.max_length, self._prefix()):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, nll in zip(owners, self._nll(windows)):
            totals[owner] -= nll
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals


def main(argv: list[str] | None = None) -> None:
    """lm-eval's own command line with the ``dllm`` model registered (``argv``: lm-eval's arguments; ``--model
    dllm`` unless another ``--model`` is given)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    runs = bool(argv) and argv[0] not in ("ls", "validate", "-h", "--help")  # lm-eval's other subcommands, help
    if runs and not any(arg == "--model" or arg.startswith("--model=") for arg in argv):
        at = 1 if argv[0] == "run" else 0  # lm-eval inserts `run` itself when no subcommand is given
        argv[at:at] = ["--model", "dllm"]
    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
