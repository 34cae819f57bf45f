"""FSDP2 on a CPU device mesh: ``fully_shard`` over 2 gloo processes trains like one process and saves a
checkpoint ``AutoModelForMaskedDiffusion.from_pretrained`` loads.

The script below (written to a temp dir, launched with ``python -m torch.distributed.run --nproc_per_node 2``)
shards the bidirectional model: every decoder layer (the classes in the model's ``_no_split_modules``, what
accelerate's TRANSFORMER_BASED_WRAP picks) is its own unit, then the root. It takes a few AdamW steps on the
MDLM loss of :mod:`dllm.core.diffusion` with fixed noise (one global draw from a seeded generator, each rank
keeps its rows), gathers the full state dict with ``get_model_state_dict(full_state_dict=True,
cpu_offload=True)`` and saves it on rank 0. The same script with ``--world 1`` and no process group is the
single-process reference. Each of the two launches trains both modes (full fine-tuning, then LoRA).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.demo.tokenizer import build_char_tokenizer
from tests.helpers import tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Measured 2026-11-26 on the project's CPU machine (torch 2.13.0+cpu, gloo): max weight difference 6.5e-8 after
# 3 AdamW steps, loss relative difference <= 1e-7; the bounds leave 15x room for reduction-order noise.
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-6

TRAIN_SCRIPT = textwrap.dedent('''\
    import argparse, json, os
    import torch
    import torch.distributed as dist
    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.diffusion import count_loss_items, mask_tokens, masked_diffusion_loss, sample_t
    from dllm.core.schedules import make_schedule

    parser = argparse.ArgumentParser()
    parser.add_argument("--base"); parser.add_argument("--out"); parser.add_argument("--world", type=int)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    sharded = args.world > 1
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (args.world,))
        rank = dist.get_rank()
    else:
        rank = 0
    def run(lora, out):
        """Train with full fine-tuning or LoRA; rank 0 saves the gathered checkpoint and the losses to out."""
        def load():
            model = AutoModelForMaskedDiffusion.from_pretrained(args.base, dtype=torch.float32)
            if lora:  # adapters on q/v; B drawn at random (it starts at 0, and A would then get no gradient)
                from peft import LoraConfig, get_peft_model
                torch.manual_seed(0)  # LoRA A is drawn from the global RNG: the same A in every process
                model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                         target_modules=["q_proj", "v_proj"]))
                g = torch.Generator().manual_seed(1)
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.data.copy_(torch.randn(param.shape, generator=g) * 0.1)
            return model

        model = load()
        model.train()
        if sharded:
            units = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
            assert len(units) == model.config.num_hidden_layers, units
            for unit in units:
                fully_shard(unit, mesh=mesh)
            fully_shard(model, mesh=mesh)
            local = sum(p.to_local().numel() for p in model.parameters())
            total = sum(p.numel() for p in model.parameters())
            assert local < total, (local, total)  # really sharded: this rank holds part of every parameter
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
        schedule = make_schedule("linear")

        # A fixed global batch of 4 rows and fixed noise; rank r of `world` takes rows [r B, (r + 1) B).
        g = torch.Generator().manual_seed(0)
        global_batch, length = 4, 24
        rows = global_batch // args.world
        mine = slice(rank * rows, (rank + 1) * rows)
        vocab = model.config.vocab_size
        losses = []
        for step in range(args.steps):
            input_ids = torch.randint(5, vocab - 1, (global_batch, length), generator=g)  # [B, L]
            labels = input_ids.clone()
            labels[:, :6] = -100  # a prompt
            labels[0, 12:] = -100  # ragged answers: ranks hold different token counts
            t = sample_t(global_batch, generator=g)  # [B]
            uniforms = torch.rand(input_ids.shape, generator=g)  # [B, L]
            noisy, masked = mask_tokens(input_ids, labels, schedule.mask_probability(t), model.config.mask_token_id,
                                        uniforms=uniforms)
            num_items = count_loss_items(labels, "token")  # over the global batch
            logits = model(input_ids=noisy[mine]).logits  # [b, L, V]
            loss = masked_diffusion_loss(logits, labels[mine], masked[mine], schedule.weight(t[mine]), num_items=num_items)
            # FSDP2 averages gradients over ranks (reduce-scatter); the global loss is the sum of the ranks' parts.
            (loss * args.world).backward()
            optimizer.step()
            optimizer.zero_grad()
            total = loss.detach().clone()
            if sharded:
                dist.all_reduce(total)
            losses.append(total.item())

        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            state = model.state_dict()
        if rank == 0:
            os.makedirs(out, exist_ok=True)
            fresh = load()
            fresh.load_state_dict(state)  # strict: every key of the gathered state dict, full shapes
            if lora:
                fresh = fresh.merge_and_unload()  # a full checkpoint from_pretrained loads
            fresh.save_pretrained(out)
            with open(os.path.join(out, "losses.json"), "w") as f:
                json.dump(losses, f)
        if sharded:
            dist.barrier()

    for mode in args.modes:  # one launch trains every mode (each from the same base)
        run(mode == "lora", os.path.join(args.out, mode))
    if sharded:
        dist.barrier()
        dist.destroy_process_group()
    ''')


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The base checkpoint, then both modes (full, lora) trained by the script in one process (the reference) and
    in one 2-process FSDP2 launch: ``(base, single, sharded)``, with a folder per mode under the last two."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    base = tmp / "base"
    config = tiny_llama_config(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                               num_hidden_layers=3)
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    script = tmp / "fsdp2_train.py"
    script.write_text(TRAIN_SCRIPT)

    single, sharded = tmp / "single", tmp / "fsdp2"
    modes = ["--modes", "full", "lora"]
    _run([sys.executable, str(script), "--base", str(base), "--out", str(single), "--world", "1", *modes])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
          "--base", str(base), "--out", str(sharded), "--world", "2", *modes])
    return base, single, sharded


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_two_cpu_processes_match_one_and_save_a_loadable_checkpoint(trained, lora):
    """Full fine-tuning, and LoRA (frozen and trainable parameters in the same shard units; the gathered
    adapter state is merged into a full checkpoint)."""
    base, single, sharded = trained
    mode = "lora" if lora else "full"
    single, sharded = single / mode, sharded / mode

    want_losses = json.loads((single / "losses.json").read_text())
    got_losses = json.loads((sharded / "losses.json").read_text())
    assert len(got_losses) == 3
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=LOSS_RTOL, atol=0)

    model = AutoModelForMaskedDiffusion.from_pretrained(sharded)  # the gathered checkpoint loads
    assert type(model).__name__ == "Llama3ForMaskedLM"
    got, want, start = (load_file(p / "model.safetensors") for p in (sharded, single, base))
    assert got.keys() == want.keys()
    diff = max((got[n] - want[n]).abs().max().item() for n in want)
    trained = [n for n in want if not lora or "q_proj" in n or "v_proj" in n]
    moved = min((want[n] - start[n]).abs().max().item() for n in trained)
    print(f"fsdp2 x2 vs x1 ({'lora' if lora else 'full'}): losses {got_losses} vs {want_losses}; "
          f"max |weight diff| = {diff:.3g}; smallest max move = {moved:.3g}")
    assert diff <= WEIGHT_ATOL
    assert moved > 10 * WEIGHT_ATOL  # every trained tensor moved well beyond the tolerance
    for name in set(want) - set(trained):  # LoRA: the frozen weights are exactly the base's
        assert torch.equal(got[name], start[name]), name
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, want[name], atol=WEIGHT_ATOL, rtol=0, msg=name)
