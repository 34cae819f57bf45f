"""Our sampler against the upstream library's (ZHZisZZ/dllm) on the same weights: CPU time per forward pass.

The same random LLaMA-shaped weights run in both: ours through :class:`dllm.auto.AutoModelForMaskedDiffusion`
(transformers' LLaMA, made bidirectional) and :func:`dllm.core.sampling.generate`; upstream's through its Fast-dLLM
LLaDA model (``dllm/pipelines/fastdllm/llada``, LLaMA-shaped: the state dict is renamed, :func:`llada_state_dict`)
and its ``FastdLLMLLaDASampler``, whose three modes (no cache, prefix, dual) are the Fast-dLLM ones ours follow.

Both run at temperature 0, low-confidence remasking, the same blocks and steps, and one of two rules whose commits
are the same in both samplers:

- ``one``: one token per step (``steps = gen_length``);
- ``threshold``: one token per step plus every position at least ``--threshold`` sure (upstream's threshold mode
  commits those and at least the best one; ours the ``ceil(masked / steps_left) = 1`` best plus those).

Upstream does not exclude the mask token from the answer; ``suppress_tokens=[mask]`` does what ours does. Every
pair of runs is checked to produce identical tokens (an ``AssertionError`` otherwise).

What is timed: ``time.process_time`` (CPU time, one torch thread) of one whole ``generate`` / ``sample`` call,
divided by its forward passes (ours report them; upstream's are counted with a forward pre-hook). Each repetition
runs both samplers back to back in alternating order; the reported ratio is the median over ``--repeats``
repetitions of the per-repetition ratio ours / upstream (paired, so drifts in machine load cancel).

Upstream's package is also called ``dllm``: :func:`load_upstream` imports the few upstream modules needed under
stand-in parent packages with our ``dllm`` modules set aside, then puts ours back (both stay usable). Nothing of
ours imports upstream; tests need no upstream checkout.

    python benchmarks/sampler_upstream.py --upstream /path/to/upstream/dllm-checkout --output upstream.json
    python benchmarks/sampler_upstream.py --upstream DIR --sizes tiny --modes dual --repeats 9
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, PreTrainedModel

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import DiffusionGenerationConfig, generate

MASK, BOS, EOS = 3, 1, 2


@dataclass(frozen=True)
class Size:
    """A model shape and the canvas it samples (``prompt + gen_length`` tokens, blocks of ``block_size``)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    prompt: int
    gen_length: int
    block_size: int


SIZES = {
    # The demo's model (dllm.demo.run: 4 layers x 64, 2 heads, SwiGLU 256) on a demo-like canvas.
    "tiny": Size(layers=4, hidden=64, heads=2, intermediate=256, vocab=48, prompt=16, gen_length=16, block_size=8),
    # Big enough that the model's matmuls, not the step's Python, are most of a no-cache pass: a 256-token canvas.
    "big": Size(layers=4, hidden=256, heads=4, intermediate=1024, vocab=4096, prompt=224, gen_length=32,
                block_size=8),
}
MODES = ("none", "prefix", "dual")
RULES = ("one", "threshold")


def llama_config(size: Size) -> LlamaConfig:
    """Our model's config: LLaMA with tied embeddings (as the demo's), RoPE base 100, weights drawn with std 0.3 (an
    opinionated random model: confidences well above 1/V, so the threshold rule fires and rankings are not ties)."""
    return LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                       num_hidden_layers=size.layers, num_attention_heads=size.heads,
                       num_key_value_heads=size.heads, max_position_embeddings=512, tie_word_embeddings=True,
                       rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 100.0},
                       initializer_range=0.3, pad_token_id=0, bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK)


# LLaMA's per-layer weights -> the LLaDA block's (ff_proj is SwiGLU's gate, up_proj its up, ff_out its down).
LLADA_LAYER_NAMES = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
                     "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
                     "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm"}


def llada_state_dict(llama: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Our LLaMA state dict under upstream's Fast-dLLM LLaDA names (tied head: ``wte`` is the output head too)."""
    out = {"model.transformer.wte.weight": llama["model.embed_tokens.weight"],
           "model.transformer.ln_f.weight": llama["model.norm.weight"]}
    for i in range(layers):
        for ours, theirs in LLADA_LAYER_NAMES.items():
            out[f"model.transformer.blocks.{i}.{theirs}.weight"] = llama[f"model.layers.{i}.{ours}.weight"]
    return out


UPSTREAM_PACKAGES = ("dllm", "dllm.core", "dllm.core.samplers", "dllm.pipelines", "dllm.pipelines.fastdllm",
                     "dllm.pipelines.fastdllm.llada", "dllm.pipelines.llada", "dllm.pipelines.llada.models")


def load_upstream(root: Path) -> dict[str, types.ModuleType]:
    """Upstream's Fast-dLLM LLaDA sampler, model and config modules from the checkout ``root`` (holding
    ``dllm/``). Its parent packages are stand-ins (their ``__init__`` would import all of upstream), and our
    ``dllm`` modules are set aside meanwhile and restored afterwards."""
    if not (root / "dllm" / "pipelines" / "fastdllm" / "llada" / "sampler.py").is_file():
        raise SystemExit(f"--upstream {root}: no dllm/pipelines/fastdllm/llada/sampler.py there")
    is_dllm = lambda name: name == "dllm" or name.startswith("dllm.")  # noqa: E731
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if is_dllm(name)}
    try:
        for name in UPSTREAM_PACKAGES:
            package = types.ModuleType(name)
            package.__path__ = [str(root / name.replace(".", "/"))]
            sys.modules[name] = package
        loaded = {key: importlib.import_module(f"dllm.pipelines.fastdllm.llada.{path}") for key, path in
                  [("sampler", "sampler"), ("modeling", "models.modeling_llada"),
                   ("config", "models.configuration_llada")]}
    finally:
        for name in [name for name in sys.modules if is_dllm(name)]:
            del sys.modules[name]
        sys.modules.update(ours)
    return loaded


def upstream_model(upstream: dict[str, types.ModuleType], size: Size, ours: PreTrainedModel) -> torch.nn.Module:
    """Upstream's LLaDA model with ``ours``' weights (checked: same logits on a random canvas)."""
    config = upstream["config"].FastdLLMLLaDAConfig(
        d_model=size.hidden, n_heads=size.heads, n_kv_heads=size.heads, n_layers=size.layers,
        mlp_hidden_size=size.intermediate, activation_type="silu", block_type="llama", rope=True, rope_theta=100.0,
        attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, layer_norm_type="rms",
        rms_norm_eps=1e-6, include_bias=False, vocab_size=size.vocab, embedding_size=size.vocab, weight_tying=True,
        max_sequence_length=512, init_device="cpu", mask_token_id=MASK, eos_token_id=EOS, pad_token_id=0)
    config.use_cache = False  # read by its forward; transformers 5 no longer sets it on every config
    model = upstream["modeling"].FastdLLMLLaDAModelLM(config, init_params=True)
    model.load_state_dict(llada_state_dict(ours.state_dict(), size.layers), strict=True)
    model.eval()
    canvas = torch.randint(4, size.vocab, (1, size.prompt + size.gen_length))
    with torch.no_grad():
        gap = (model(canvas).logits - ours(input_ids=canvas).logits).abs().max().item()
    if gap > 1e-4:
        raise AssertionError(f"upstream's model does not reproduce ours on the same weights (max gap {gap:.2e})")
    return model


def our_config(size: Size, mode: str, rule: str, threshold: float) -> DiffusionGenerationConfig:
    """Our sampler's settings for one row (no EOS: both samplers fill the whole canvas)."""
    return DiffusionGenerationConfig(gen_length=size.gen_length, steps=size.gen_length, block_size=size.block_size,
                                     threshold=threshold if rule == "threshold" else None, cache=mode,
                                     mask_token_id=MASK, eos_token_id=None)


def upstream_config(upstream: dict[str, types.ModuleType], size: Size, mode: str, rule: str,
                    threshold: float) -> Any:
    """Upstream's settings for the same row (its ``use_cache=None`` is our ``none``)."""
    return upstream["sampler"].FastdLLMLLaDASamplerConfig(
        max_new_tokens=size.gen_length, block_size=size.block_size, steps=size.gen_length, temperature=0.0,
        remasking="low_confidence", use_cache=None if mode == "none" else mode,
        threshold=threshold if rule == "threshold" else None, suppress_tokens=[MASK])


class PassCounter:
    """Counts a module's forward calls (a pre-hook: upstream's sampler does not report them)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: Any) -> None:
        self.calls += 1


def timed(run: Any, calls: int) -> tuple[torch.Tensor, float, int]:
    """``(tokens, CPU seconds, forward passes)`` of ``calls`` runs of ``run()``, which returns ``(tokens, passes)``
    (several calls per timing: a tiny model's run is tens of milliseconds, close to the clock's noise)."""
    start = time.process_time()
    total = 0
    for _ in range(calls):
        tokens, passes = run()
        total += passes
    return tokens, time.process_time() - start, total


def row_runners(ours: PreTrainedModel, theirs: torch.nn.Module, counter: PassCounter, sampler: Any, size: Size,
                mode: str, rule: str, threshold: float, upstream: dict[str, types.ModuleType]) -> dict[str, Any]:
    """``{"ours": run, "upstream": run}``, each returning ``(tokens [1, P + G], passes)`` for one prompt."""
    prompt = torch.randint(4, size.vocab, (1, size.prompt), generator=torch.Generator().manual_seed(size.prompt))
    mine, yours = our_config(size, mode, rule, threshold), upstream_config(upstream, size, mode, rule, threshold)

    def run_ours() -> tuple[torch.Tensor, int]:
        out = generate(ours, prompt, mine)
        return out.sequences, out.forward_passes

    def run_upstream() -> tuple[torch.Tensor, int]:
        before = counter.calls
        tokens = sampler.sample(prompt, config=yours)
        return tokens, counter.calls - before

    return {"ours": run_ours, "upstream": run_upstream}


def measure_row(runners: dict[str, Any], repeats: int, calls: int) -> dict[str, Any]:
    """Interleaved repetitions of both runners: tokens checked identical, per-pass CPU ms, paired ratio."""
    per_pass: dict[str, list[float]] = {"ours": [], "upstream": []}
    passes = {}
    order = ["ours", "upstream"]
    reference = {name: runners[name]()[0] for name in order}  # warm-up, untimed
    if not torch.equal(reference["ours"], reference["upstream"]):
        raise AssertionError(f"tokens differ:\n ours     {reference['ours'].tolist()}\n "
                             f"upstream {reference['upstream'].tolist()}")
    for _ in range(repeats):
        for name in order:
            tokens, seconds, total = timed(runners[name], calls)
            if not torch.equal(tokens, reference[name]):
                raise AssertionError(f"{name}: a repetition produced other tokens")
            per_pass[name].append(1000 * seconds / total)
            passes[name] = total // calls
        order.reverse()
    ratios = [a / b for a, b in zip(per_pass["ours"], per_pass["upstream"])]
    return {"passes": passes, "ours_ms_per_pass": statistics.median(per_pass["ours"]),
            "upstream_ms_per_pass": statistics.median(per_pass["upstream"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def run_size(upstream: dict[str, types.ModuleType], name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (mode, rule) row of one size."""
    size = SIZES[name]
    torch.manual_seed(0)
    ours = AutoModelForMaskedDiffusion.from_config(llama_config(size)).eval()
    theirs = upstream_model(upstream, size, ours)
    counter = PassCounter(theirs)
    tokenizer = types.SimpleNamespace(mask_token_id=MASK, bos_token_id=BOS, eos_token_id=EOS)
    sampler = upstream["sampler"].FastdLLMLLaDASampler(model=theirs, tokenizer=tokenizer)
    rows = []
    for mode in args.modes:
        for rule in args.rules:
            runners = row_runners(ours, theirs, counter, sampler, size, mode, rule, args.threshold, upstream)
            row = {"size": name, "mode": mode, "rule": rule, **measure_row(runners, args.repeats, args.calls[name])}
            print(f"{name:5s} {mode:6s} {rule:9s} passes {row['passes']['ours']:3d}  ours "
                  f"{row['ours_ms_per_pass']:7.3f} ms/pass  upstream {row['upstream_ms_per_pass']:7.3f}  "
                  f"ratio {row['ratio']:.3f} [{row['ratio_min']:.3f}, {row['ratio_max']:.3f}]", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of ZHZisZZ/dllm (holds dllm/)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--threshold", type=float, default=0.3, help="the threshold rule's confidence")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions (interleaved pairs) per row")
    parser.add_argument("--tiny_calls", type=int, default=5, help="generate calls per timing at the tiny size")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.calls = {"tiny": args.tiny_calls, "big": 1}
    torch.set_num_threads(1)
    upstream = load_upstream(args.upstream.resolve())
    rows = [row for name in args.sizes for row in run_size(upstream, name, args)]
    if args.output is not None:
        meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                "repeats": args.repeats, "calls_per_timing": args.calls, "threshold": args.threshold,
                "sizes": {name: asdict(SIZES[name]) for name in args.sizes}}
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
