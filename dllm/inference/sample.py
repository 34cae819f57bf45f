"""``dllm sample``: answer prompts with a trained checkpoint, in batches.

    dllm sample outputs/demo "Reverse: hello" "Sort: 4213"            # print the completions
    dllm sample outputs/demo --prompt_file prompts.txt --output answers.jsonl --steps 8 --block_size 4
    dllm sample outputs/demo --prompt_file chats.jsonl --batch_size 64 --temperature 0.7 --top_p 0.9
    dllm sample outputs/qwen3-vl --image table.png "What is in row 2?" --cache prefix   # Qwen3-VL only

Prompts come from the arguments (each one user turn), a text file (one prompt per line, blank lines skipped)
or a JSONL file (``{"messages": [{"role": ..., "content": ...}, ...]}`` or ``{"prompt": "..."}`` rows). The
sampler starts from the checkpoint's saved settings (``diffusion_generation_config.json``); every
:class:`~dllm.core.sampling.DiffusionGenerationConfig` option is a flag that overrides it. With ``--output`` each
prompt gets a JSONL row ``{"prompt", "completion", "forward_passes", "seconds"}`` (the last two are those of the
batch it was answered in); without, the completions are printed, one per prompt. With ``--image`` (a file or a
``data:image/...;base64,`` URL; a Qwen3-VL checkpoint saved with its processor) every prompt is a question about
that image, placed before the first user turn's text; every sampler setting works with it (caches, guidance: see
:mod:`dllm.pipelines.qwen3_vl.generation`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dllm.errors import UsageError
from dllm.inference.engine import Engine, VisionPrompt, check_fits, check_text, encode_chats, encode_texts
from dllm.data.images import load_image
from dllm.inference.loading import (
    CheckpointArguments,
    SamplerOptions,
    load_checkpoint,
    load_image_processor,
    parse_verb_args,
    sampler_overrides,
)


@dataclass
class SampleArguments:
    """Where prompts come from and where completions go."""

    prompt_file: str | None = field(default=None, metadata={
        "help": 'A .txt file (one prompt per line) or a .jsonl file ({"messages": [...]} or {"prompt": "..."} rows).'})
    output: str | None = field(default=None, metadata={
        "help": "Write JSONL rows (prompt, completion, forward_passes, seconds) here instead of printing."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per sampler call."})
    image: str | None = field(default=None, metadata={
        "help": "An image every prompt asks about: a file or a data:image/...;base64, URL (Qwen3-VL checkpoints "
                "saved with their processor only)."})


@dataclass
class Prompt:
    """A prompt as given (written back to the output) and the conversation it is answered as."""

    given: str | list[dict[str, str]]
    messages: list[dict[str, str]]


def user_prompt(text: str) -> Prompt:
    """A plain prompt: one user turn."""
    return Prompt(text, [{"role": "user", "content": text}])


def _valid_unicode(messages: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    """``messages``, if every content is valid Unicode (JSON can spell a lone surrogate, ``"\\ud800"``)."""
    for message in messages:
        check_text(message["content"], where)
    return messages


def _messages(row: Any) -> list[dict[str, str]] | None:
    """A JSONL row's conversation, or None if it is neither ``{"messages": [...]}`` nor ``{"prompt": "..."}``."""
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and "messages" not in row:
        return user_prompt(row["prompt"]).messages
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    ok = all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
             for m in messages)
    return messages if ok else None


def _jsonl_prompts(path: Path, lines: list[str]) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
        messages = _messages(row)
        if messages is None:
            raise UsageError(f'{path}, line {number}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}} '
                             'or {"prompt": "..."}')
        given = row.get("messages", row.get("prompt"))
        prompts.append(Prompt(given, _valid_unicode(messages, f"{path}, line {number}")))
    return prompts


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts of a ``.jsonl`` file (one JSON object a line) or of a text file (one prompt a line).

    Raises:
        UsageError: no such file, not UTF-8 text, no prompts in it, or a JSONL line that is not a prompt or holds
            invalid Unicode (naming file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such prompt file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err})") from err
    if path.suffix == ".jsonl":
        prompts = _jsonl_prompts(path, lines)
    else:
        prompts = [user_prompt(line) for line in lines if line.strip()]
    if not prompts:
        raise UsageError(f"{path}: no prompts (the file is empty)")
    return prompts


def answer(engine: Engine, prompts: list[Prompt], ids: list[list[int]], batch_size: int,
           inputs: list[VisionPrompt] | None = None) -> list[dict[str, Any]]:
    """One output row per prompt (``ids``: its tokens), in order; batches hold prompts of similar length.
    ``inputs``: what the sampler gets instead of ``ids`` (the conversations with an image)."""
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    given = inputs if inputs is not None else ids
    rows: list[dict[str, Any]] = [{} for _ in prompts]
    show = sys.stderr.isatty() and len(prompts) > batch_size
    with tqdm(total=len(prompts), unit="prompt", disable=not show, file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            began = time.perf_counter()
            completions = engine.run([given[i] for i in batch])
            seconds = round(time.perf_counter() - began, 4)
            for i, completion in zip(batch, completions):
                rows[i] = {"prompt": prompts[i].given, "completion": engine.decode(completion.ids),
                           "forward_passes": completion.forward_passes, "seconds": seconds}
            bar.update(len(batch))
    return rows


def raw_text(prompt: Prompt, number: int) -> str:
    """The text a checkpoint without a chat template (a pretrained model: ``dllm pt``) continues: a plain prompt.

    Raises:
        UsageError: a conversation of other turns than one user turn, which such a tokenizer cannot render.
    """
    if len(prompt.messages) == 1 and prompt.messages[0]["role"] == "user":
        return prompt.messages[0]["content"]
    raise UsageError(f"prompt {number}: a conversation, and the checkpoint's tokenizer has no chat template to render "
                     "one (a pretrained model continues text): give plain text prompts")


def with_image(messages: list[dict[str, str]], image: Any) -> list[dict[str, Any]]:
    """The conversation with ``image`` before the text of its first user turn (Qwen content parts)."""
    out, placed = [], False
    for message in messages:
        if message["role"] == "user" and not placed:
            message = {**message, "content": [{"type": "image", "image": image},
                                              {"type": "text", "text": message["content"]}]}
            placed = True
        out.append(message)
    return out


def check_writable(out: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work: its folder is created, and the file opened
    for appending (and removed again if it did not exist), so nothing computed is lost to a bad path.

    Raises:
        UsageError: naming ``flag``, the path and the operating system's reason.
    """
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8"):
            pass
    except FileExistsError as err:  # mkdir met a file where a folder of the path belongs
        raise UsageError(f"{flag} {out}: cannot write there (a file stands where a folder of the path belongs)") \
            from err
    except OSError as err:
        raise UsageError(f"{flag} {out}: cannot write there ({err.strerror or err})") from err
    if not existed:
        out.unlink()


def _check_lengths(engine: Engine, prompts: list[Prompt], inputs: list[list[int]] | list[VisionPrompt]) -> None:
    """Refuse, before the first batch, a prompt that does not fit the model's positions with the answer (a vision
    prompt keeps what it was processed into, for the batch it joins)."""
    for number, (prompt, given) in enumerate(zip(prompts, inputs), start=1):
        check_fits(engine.model.config, engine.prompt_length(given), engine.config.gen_length,
                   f"prompt {number} ({str(prompt.given)[:40]!r})")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run ``dllm sample`` with command-line ``argv``; returns the output rows.

    Raises:
        UsageError: no prompts, a bad prompt file, a checkpoint that cannot be sampled from, a bad option.
    """
    checkpoint, positional, (args, load_args, options) = parse_verb_args(
        "dllm sample", sys.argv[1:] if argv is None else argv,
        (SampleArguments, CheckpointArguments, SamplerOptions), prompts=True)
    prompts = [user_prompt(text) for text in positional]
    for number, prompt in enumerate(prompts, start=1):  # undecodable argument bytes arrive as lone surrogates
        _valid_unicode(prompt.messages, f"prompt argument {number}")
    prompts += read_prompt_file(args.prompt_file) if args.prompt_file else []
    if not prompts:
        raise UsageError("no prompts: give them as arguments or with --prompt_file")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.output is not None:
        check_writable(Path(args.output), "--output")
    processor = image = None
    if args.image is not None:  # checked before the weights are read
        processor = load_image_processor(checkpoint, load_args)
        image = load_image(args.image)
    loaded = load_checkpoint(checkpoint, load_args, **sampler_overrides(options))
    if loaded.tokenizer.chat_template is None and image is None:  # a pretrained model (dllm pt): text to continue
        ids = encode_texts(loaded.tokenizer, [raw_text(p, n) for n, p in enumerate(prompts, start=1)])
    else:
        try:
            ids = encode_chats(loaded.tokenizer, [p.messages for p in prompts])
        except ValueError as err:  # no chat template
            raise UsageError(f"{checkpoint}: {err}") from err
    inputs = None if image is None else [VisionPrompt(with_image(p.messages, image)) for p in prompts]
    engine = Engine(loaded.model, loaded.tokenizer, loaded.generation_config, processor)
    _check_lengths(engine, prompts, inputs or ids)
    rows = answer(engine, prompts, ids, args.batch_size, inputs)
    if args.output is None:
        for row in rows:
            print(row["completion"], flush=True)
        return rows
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} completions to {out}", file=sys.stderr)
    return rows
