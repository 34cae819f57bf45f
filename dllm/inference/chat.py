"""``dllm chat``: a multi-turn chat with a checkpoint in the terminal, watching each answer unmask.

    dllm chat outputs/demo                                   # the checkpoint's saved sampler settings
    dllm chat outputs/demo --block_size 4 --steps 8 --step_delay 0.1 --show_steps True
    printf 'sort 8213\\n/reset\\nreverse abc\\n' | dllm chat outputs/demo   # piped: answers only, one per line

Every line you type is a user turn of one conversation, sent through the checkpoint's chat template with the
turns before it. While the answer is generated the screen shows its canvas: masked positions as ``░``,
EOS as ``·``, the tokens the latest step committed highlighted; the sampler runs in a worker thread and
hands over each finished block with its steps (the sampler's ``on_block`` callback), which are drawn
``--step_delay`` seconds apart.
Then the final answer is printed. Commands: ``/reset`` (forget the conversation), ``/settings`` (show the
sampler settings), ``/settings steps=4 threshold=0.9`` (change them; ``none`` unsets), ``/image PATH`` (attach
an image file, or a ``data:image/...;base64,`` URL, to your next message; vision-language checkpoints such as
Qwen3-VL only), ``/help``, ``/quit``.

With no terminal (standard input not a tty) nothing but the answers is printed, one line each (a newline in
an answer is written as ``\\n``); the commands still work, silently, except that a refused command (a bad
setting or image) prints its one-line error on standard error.
"""

from __future__ import annotations

import ast
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dllm.core.sampling import DiffusionGenerationConfig, GenerationOutput, StepRecord, answer_ids, generate
from dllm.core.sampling.config import SamplerSettingError, fields_of_kind
from dllm.errors import UsageError
from dllm.inference.background import SamplerThread
from dllm.inference.engine import ContextLengthError, VisionPrompt, check_fits, encode_chats, sampler_inputs
from dllm.data.images import load_image
from dllm.inference.loading import (
    CheckpointArguments,
    LoadedCheckpoint,
    SamplerOptions,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MASK_GLYPH = "░"
SPECIAL_GLYPH = "·"
# What /settings shows and may change: the sampler options, not the token ids that come with the checkpoint.
SETTINGS = fields_of_kind("sampler")
HELP = ("/reset  forget the conversation   /settings [name=value ...]  show or change sampler settings   "
        "/image PATH  attach an image to your next message   /quit  leave")


@dataclass
class ChatArguments:
    """How the terminal shows the answers."""

    step_delay: float = field(default=0.05, metadata={
        "help": "Seconds each denoising step stays on screen (0: as fast as the sampler)."})
    show_steps: bool = field(default=False, metadata={
        "help": "Keep every step's canvas on screen, one line each, instead of redrawing one line."})


def parse_settings(config: DiffusionGenerationConfig, text: str, model_config: Any = None) -> DiffusionGenerationConfig:
    """``config`` with ``name=value`` pairs applied (``none`` unsets; numbers as numbers; else a string); with
    ``model_config``, an answer length beyond the model's positions is refused too.

    Raises:
        ValueError: an unknown name or a pair without ``=``; :class:`SamplerSettingError` (a ``ValueError``): a
            value the config refuses, naming its field.
    """
    changes: dict[str, Any] = {}
    for pair in text.split():
        name, sep, raw = pair.partition("=")
        if not sep or name not in SETTINGS:
            raise ValueError(f"{pair!r}: expected name=value with a name among {', '.join(SETTINGS)}")
        changes[name] = None if raw.lower() == "none" else _literal(raw)
    changed = replace(config, **changes)
    try:
        check_fits(model_config, 1, changed.gen_length)
    except ContextLengthError as err:
        raise SamplerSettingError("gen_length", f"must leave room for a prompt in the model's {err.limit} "
                                                f"positions, got {changed.gen_length}") from err
    return changed


def _literal(raw: str) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return value if isinstance(value, (int, float)) else raw


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int], mask_token_id: int) -> list[str]:
    """The text of each answer position: ``░`` for a mask, ``·`` for another special token (EOS, padding)."""
    special = set(tokenizer.all_special_ids)
    return [MASK_GLYPH if i == mask_token_id else SPECIAL_GLYPH if i in special else tokenizer.decode([i])
            for i in ids]


class Chat:
    """One conversation with a loaded checkpoint: :meth:`handle` takes each input line."""

    def __init__(self, loaded: LoadedCheckpoint, args: ChatArguments | None = None, console: Any = None):
        self.loaded, self.args, self.console = loaded, args or ChatArguments(), console
        self.config = replace(loaded.generation_config, record_history=False, progress=False)
        self.messages: list[dict[str, Any]] = []
        self.image: Any = None  # attached to the next user turn (/image)

    def handle(self, line: str) -> str | None:
        """Answer a user turn, or run a command; returns the answer (``None`` for a command). Raises
        :class:`EOFError` on ``/quit``."""
        line = line.strip()
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            raise EOFError
        if command == "/reset":
            self.messages, self.image = [], None
            self._say("conversation cleared")
        elif command == "/settings":
            self._settings(rest)
        elif command == "/image":
            self._attach(rest.strip())
        elif command == "/help" or (line.startswith("/") and command != "/"):
            self._say(HELP if command == "/help" else f"unknown command {command}; {HELP}")
        elif line:
            try:
                return self.reply(line)
            except ContextLengthError as err:  # the turn is dropped, the conversation kept
                self._error(f"not answered: {err}; /reset starts a new conversation")
        return None

    def reply(self, text: str) -> str:
        """Answer ``text`` as the next user turn (with the attached image, if any; drawing the canvas on a
        console) and remember both turns.

        Raises:
            ContextLengthError: the conversation and the answer do not fit the model's positions (nothing is kept,
                the image stays attached).
        """
        content: Any = text if self.image is None else [{"type": "image", "image": self.image},
                                                        {"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        try:
            ids, mask, kwargs = self._inputs()
            check_fits(self.loaded.model.config, ids.shape[1], self.config.gen_length, "the conversation")
        except ContextLengthError:
            self.messages.pop()
            raise
        self.image = None
        out = self._generate(ids, mask, kwargs) if self.console is not None else self._run(ids, mask, kwargs, None)
        answer_row = answer_ids(out.sequences.cpu(), ids.shape[1], self.config.eos_token_id)[0]
        answer = self.loaded.tokenizer.decode(answer_row, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _inputs(self) -> tuple[Any, Any, dict[str, Any] | None]:
        """The sampler's inputs for the conversation: token ids, or, once it holds an image, the processor's."""
        with_images = any(not isinstance(m["content"], str) for m in self.messages)
        prompt = VisionPrompt(self.messages) if with_images else encode_chats(self.loaded.tokenizer,
                                                                              [self.messages])[0]
        return sampler_inputs(self.loaded.model, [prompt], self.config.gen_length, self.config.pad_token_id,
                              self.loaded.processor)

    def _attach(self, source: str) -> None:
        """``/image PATH``: the image goes with the next user turn."""
        if not source:
            self._error("usage: /image PATH (an image file or a data:image/...;base64, URL)")
            return
        try:
            self.loaded.image_processor("/image")
            self.image = load_image(source)
        except UsageError as err:
            self._error(str(err))
            return
        self._say(f"image attached to your next message: {source}")

    def _run(self, ids: Any, mask: Any, kwargs: dict[str, Any] | None, on_block: Any) -> GenerationOutput:
        config = replace(self.config, record_history=on_block is not None)
        return generate(self.loaded.model, ids, config, attention_mask=mask, on_block=on_block,
                        model_kwargs=kwargs)

    def _generate(self, ids: Any, mask: Any, kwargs: dict[str, Any] | None) -> GenerationOutput:
        """Run the sampler in a thread; draw each step of each block as the block arrives. An interruption
        (Ctrl-C) stops the sampler at its next forward pass before it propagates."""
        from rich.live import Live

        run = SamplerThread(self.loaded.model, lambda on_block: self._run(ids, mask, kwargs, on_block),
                            name="dllm-chat-sampler")
        try:
            with Live(console=self.console, transient=True, refresh_per_second=30) as live:
                for _index, _x, steps in run.blocks():
                    self._draw(live, steps, ids.shape[1])
        except BaseException:
            run.stop()
            raise
        return run.result()

    def _draw(self, live: Any, steps: list[StepRecord], prompt_length: int) -> None:
        for record in steps:
            view = self._canvas(record, prompt_length)
            if self.args.show_steps:
                live.console.print(view)
            else:
                live.update(view)
            time.sleep(self.args.step_delay)

    def _canvas(self, record: StepRecord, prompt_length: int) -> Any:
        """One step's answer canvas: masks dim, the tokens this step committed highlighted."""
        from rich.text import Text

        ids = record.tokens[0, prompt_length:].tolist()
        new = record.committed[0, prompt_length:].tolist()
        view = Text(f"step {record.step + 1:>3} block {record.block + 1:>2}  ", style="dim")
        for piece, committed in zip(token_pieces(self.loaded.tokenizer, ids, self.config.mask_token_id), new):
            view.append(piece, style="bold black on green" if committed else "" if piece.strip("░·") else "dim")
        return view

    def _settings(self, text: str) -> None:
        if text.strip():
            try:
                self.config = parse_settings(self.config, text, self.loaded.model.config)
            except SamplerSettingError as err:
                self._error(f"settings unchanged: {err.field} {err.message}")
                return
            except ValueError as err:
                self._error(f"settings unchanged: {err}")
                return
        self._say("  ".join(f"{name}={getattr(self.config, name)}" for name in SETTINGS))

    def _say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, style="yellow", markup=False, highlight=False)

    def _error(self, message: str) -> None:
        """A refused command: on the console like any message; piped, one line on standard error."""
        if self.console is not None:
            self.console.print(message, style="bold red", markup=False, highlight=False)
        else:
            print(f"dllm chat: {message}", file=sys.stderr, flush=True)


def _interactive(chat: Chat) -> None:
    from rich.text import Text

    console = chat.console
    console.print(f"dllm chat with {chat.loaded.default_name}. {HELP}", style="dim", markup=False, highlight=False)
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        try:
            answer = chat.handle(line)
        except EOFError:
            return
        except KeyboardInterrupt:
            chat.messages = chat.messages[:-1]  # the unanswered turn
            console.print("(interrupted)", style="yellow")
            continue
        if answer is not None:
            console.print(Text("dllm> ", style="bold green") + Text(answer))


def _piped(chat: Chat, lines: Any) -> None:
    for line in lines:
        try:
            answer = chat.handle(line)
        except EOFError:
            return
        if answer is not None:
            print(answer.replace("\n", "\\n"), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run ``dllm chat`` with command-line ``argv`` until ``/quit`` or the end of the input.

    Raises:
        UsageError: a checkpoint that cannot be loaded or has no chat template, a bad option.
    """
    checkpoint, _, (args, load_args, options) = parse_verb_args(
        "dllm chat", sys.argv[1:] if argv is None else argv, (ChatArguments, CheckpointArguments, SamplerOptions))
    if args.step_delay < 0:
        raise UsageError(f"--step_delay must be at least 0, got {args.step_delay}")
    loaded = load_checkpoint(checkpoint, load_args, **sampler_overrides(options))
    if loaded.tokenizer.chat_template is None:
        raise UsageError(f"{checkpoint}: the tokenizer has no chat template")
    if not sys.stdin.isatty():
        _piped(Chat(loaded, args), sys.stdin)
        return
    from rich.console import Console

    _interactive(Chat(loaded, args, Console(highlight=False)))

