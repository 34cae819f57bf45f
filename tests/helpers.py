"""Helpers shared by test modules: tiny model configs (import from here, never from another test module)."""

from __future__ import annotations

import json
import threading
import time
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast


def tiny_llama_config(vocab_size: int = 128, **overrides):
    from transformers import LlamaConfig

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_qwen3_config(vocab_size: int = 128, **overrides):
    from transformers import Qwen3Config

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return Qwen3Config(**values)


def tiny_gemma2_config(vocab_size: int = 128, **overrides):
    from transformers import Gemma2Config

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return Gemma2Config(**values)


def alpaca_fixture(path: Path, n: int = 24) -> Path:
    rows = [{"instruction": f"Repeat {i}", "input": "" if i % 2 else "twice", "output": f"{i} {i}"} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def checkpoint_without_mask_token(tmp_path, char_tokenizer, causal_cls, config):
    """A causal checkpoint whose tokenizer has no mask token (like LLaMA 3): the script must add one."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer, bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    torch.manual_seed(0)
    path = tmp_path / "base"
    causal_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, len(tokenizer)


def save_tiny_masked_lm(path: Path, *, gen_length: int | None = None, **config_overrides) -> Path:
    """A tiny LLaMA masked LM with the character tokenizer (its special ids in the config) saved to ``path``,
    plus saved sampler settings when ``gen_length`` is given; the kind of checkpoint `dllm demo` writes."""
    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.sampling import DiffusionGenerationConfig
    from dllm.demo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               mask_token_id=tokenizer.mask_token_id, **config_overrides)
    AutoModelForMaskedDiffusion.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if gen_length is not None:
        DiffusionGenerationConfig(gen_length=gen_length).save_pretrained(path)
    return path


def noise_image(seed: int = 0, size: tuple[int, int] = (64, 64)):
    """A seeded RGB noise image (64x64 is 4 tokens for the tiny Qwen3-VL's processor)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def vl_rows(n: int = 8) -> list[dict]:
    """``n`` Korean visual-QA rows of the collator's ``{messages, images}`` format, one noise image each."""
    return [{"messages": [{"role": "user", "content": f"<image>사진 {i}번은 무엇입니까?"},
                          {"role": "assistant", "content": f"잡음 이미지 {i}입니다."}],
             "images": [noise_image(i)]} for i in range(n)]


def write_vl_rows(folder: Path, n: int = 4) -> Path:
    """``vl_rows(n)`` as a data file of the generic ``{messages, images}`` format (``dllm sft``'s), the images
    saved as PNGs beside it; returns the file."""
    from datasets import Dataset

    (folder / "img").mkdir(parents=True)
    rows = []
    for i, row in enumerate(vl_rows(n)):
        row["images"][0].save(folder / "img" / f"{i}.png")
        rows.append({"messages": row["messages"], "images": [f"img/{i}.png"]})
    Dataset.from_list(rows).to_json(str(folder / "chat.json"))
    return folder / "chat.json"


def save_tiny_vl(path: Path, **settings) -> Path:
    """A tiny random Qwen3-VL masked LM with its processor and a mask token saved to ``path`` (what
    ``dllm sft qwen3_vl`` writes), plus saved sampler settings ``settings`` when given. Needs torchvision."""
    from dllm.core.models import add_mask_token
    from dllm.core.sampling import DiffusionGenerationConfig
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl

    model, processor = build_tiny_qwen3_vl()
    add_mask_token(model, processor.tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if settings:
        DiffusionGenerationConfig(**settings).save_pretrained(path)
    return path


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# One interpreter for many command-line cases: each case's stdout and stderr end at a line holding this marker.
_CASE_END = "@@dllm-case-end@@"
# A case is [script, argv]: ``python SCRIPT ARGV`` (run as __main__), or ``dllm ARGV`` when script is None. An
# exception that escapes is printed with its traceback and the status is 1, as a fresh ``python`` would.
_CASES_DRIVER = f"""
import json, runpy, sys, traceback
from dllm.cli import main
for script, argv in json.loads(sys.stdin.read()):
    try:
        if script is None:
            status = main(argv)
        else:
            sys.argv = [script, *argv]
            runpy.run_path(script, run_name="__main__")
            status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except Exception:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.write("\\n{_CASE_END}\\n")
    sys.stderr.flush()
    print("\\n{_CASE_END}", status, flush=True)
"""


def run_cases(cases: dict[str, tuple[str | None, list[str]]], env: dict[str, str], cwd: Path,
              timeout: float = 900) -> dict[str, tuple[int, str, str]]:
    """Each case ``(script, argv)`` (``python SCRIPT ARGV``, or ``dllm ARGV`` when script is None) run one after
    another in ONE fresh interpreter, without paying the start-up and the imports once per case: per case, its
    exit status, stdout and stderr."""
    import subprocess
    import sys

    names = list(cases)
    result = subprocess.run([sys.executable, "-c", _CASES_DRIVER], input=json.dumps([cases[n] for n in names]),
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # stdout: OUT_0, then per case i "\n<marker> STATUS_i\n" OUT_{i+1}; stderr: ERR_i "\n<marker>\n" per case
    outs = result.stdout.split(f"\n{_CASE_END} ")
    errs = result.stderr.split(f"\n{_CASE_END}\n")
    assert len(outs) == len(errs) == len(names) + 1, result.stdout[-3000:] + result.stderr[-3000:]
    statuses = [int(chunk.partition("\n")[0]) for chunk in outs[1:]]
    stdouts = [outs[0]] + [chunk.partition("\n")[2] for chunk in outs[1:-1]]
    return {name: (statuses[i], stdouts[i], errs[i]) for i, name in enumerate(names)}


def run_dllm_cases(cases: dict[str, list[str]], env: dict[str, str], cwd: Path) -> dict[str, tuple[int, str, str]]:
    """``dllm ARGV`` for each case, in one fresh interpreter (:func:`run_cases`)."""
    return run_cases({name: (None, argv) for name, argv in cases.items()}, env, cwd)


# What importing leaves in sys.modules, for the tests that promise an import pulls in no heavy or optional package.
# Every registered statement runs in ONE fresh interpreter, in the registered order (lightest first), and each
# footprint is sys.modules after its statement and every one before it: a superset of what the statement alone
# imports, so a check on it can fail only for more modules, never pass for fewer.
IMPORT_STEPS: dict[str, tuple[int, str]] = {}


def import_step(name: str, order: int, statement: str) -> str:
    """Register ``statement`` (run ``order``-th, see IMPORT_STEPS) as the footprint ``name``; returns ``name``."""
    assert IMPORT_STEPS.get(name, (order, statement)) == (order, statement), name
    IMPORT_STEPS[name] = (order, statement)
    return name


def import_footprints(cwd: Path) -> dict[str, set[str]]:
    """Every registered step's footprint (the module names in sys.modules after it), from one fresh interpreter."""
    import subprocess
    import sys

    steps = sorted(IMPORT_STEPS.items(), key=lambda item: item[1][0])
    code = "import json, sys\nfootprints = {}\n" + "".join(
        f"{statement}\nfootprints[{name!r}] = sorted(sys.modules)\n" for name, (_, statement) in steps
    ) + "print(json.dumps(footprints))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return {name: set(modules) for name, modules in json.loads(result.stdout.splitlines()[-1]).items()}


@contextmanager
def benchmark_module(file_name: str) -> Iterator[object]:
    """``benchmarks/<file_name>`` imported as a module (registered in ``sys.modules`` while in use: dataclasses look
    their module up while the class is built)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / file_name
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
