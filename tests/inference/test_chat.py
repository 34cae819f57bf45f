"""``dllm chat`` the way a person uses it: typed into a real terminal (tmux) on the tiny checkpoint, asserting on
what the screen shows (the tokens each step committed highlighted); and piped, answers only. Answers must be the
sampler's own for the same conversation.

The tiny checkpoint's weights are random: its answers are gibberish, but the chat shows, highlights and remembers
them exactly as it would a trained model's, offline and in seconds. With ``DLLM_WRITE_SCREENSHOTS=1`` one more test
drives the trained demo checkpoint (``DLLM_SCREENSHOT_CHECKPOINT``, else ``outputs/demo``) with the demo's prompts
and writes the README's ``docs/images/chat.svg`` from the terminal's screen.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dllm.core.sampling import DiffusionGenerationConfig, answer_ids, generate, generate_text
from dllm.inference.chat import MASK_GLYPH, parse_settings
from dllm.inference.engine import encode_chats
from dllm.inference.loading import CheckpointArguments, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux to drive a real terminal")


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))


def conversation_answer(loaded, messages: list[dict[str, str]], config: DiffusionGenerationConfig) -> str:
    """What the sampler answers to the whole conversation (chat template, all turns)."""
    prompt = encode_chats(loaded.tokenizer, [messages])[0]
    out = generate(loaded.model, torch.tensor([prompt]), config)
    return loaded.tokenizer.decode(answer_ids(out.sequences, len(prompt), config.eos_token_id)[0],
                                   skip_special_tokens=True)


def test_parse_settings_changes_names_and_refuses_mistakes():
    config = DiffusionGenerationConfig(gen_length=8)
    changed = parse_settings(config, "steps=4 threshold=0.9 cache=prefix block_size=none")
    assert (changed.steps, changed.threshold, changed.cache, changed.block_size) == (4, 0.9, "prefix", None)
    for bad, message in [("stepz=2", "stepz"), ("steps", "name=value"), ("steps=9", "steps"),
                         ("cache=fast", "cache"), ("steps=abc", "steps must be an integer or None, got 'abc'")]:
        with pytest.raises(ValueError, match=message):
            parse_settings(config, bad)


@pytest.mark.slow
def test_piped_chat_prints_only_the_answers(tiny_checkpoint, loaded):
    config = replace(loaded.generation_config, steps=4)
    expected = generate_text(loaded.model, loaded.tokenizer, ["hello", "abc"], config)
    assert all("\n" not in answer for answer in expected)
    result = subprocess.run([sys.executable, "-m", "dllm.cli", "chat", str(tiny_checkpoint), "--device", "cpu",
                             "--steps", "4"], input="hello\n/settings\n/reset\nabc\n/quit\nnever answered\n",
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == expected  # /reset: "abc" is answered as a first turn


class Terminal:
    """A tmux session of ``width`` x 40 running one command."""

    def __init__(self, name: str, command: str, width: int = 120):
        self.name, self.width = name, width
        # the pane's shell may export its first size (80 x 24, before tmux applies -x/-y) as COLUMNS and LINES,
        # which rich would take over the terminal's real size
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", "40",
                        f"unset COLUMNS LINES; {command}"], check=True)

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def screen(self, ansi: bool = False) -> str:
        """The screen and its scrollback as text; ``ansi``: with the colours and attributes as SGR sequences."""
        return subprocess.run(["tmux", "capture-pane", *(["-e"] if ansi else []), "-pt", self.name, "-S", "-200"],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(self, predicate, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(screen := self.screen()):
            assert time.monotonic() < deadline, f"timed out; the screen shows:\n{screen}"
            time.sleep(0.2)
        return screen

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def answers_on(screen: str) -> list[str]:
    return [line.removeprefix("dllm> ").rstrip() for line in screen.splitlines() if line.startswith("dllm> ")]


def highlighted(ansi_screen: str) -> list[str]:
    """Per step line of a ``tmux capture-pane -e`` screen, the characters drawn on the highlight background (rich
    decodes the SGR sequences: only parameter 42 gives standard colour 2, green, as background)."""
    from rich.text import Text

    found = []
    for line in ansi_screen.splitlines():
        text = Text.from_ansi(line)
        if text.plain.startswith("step "):
            found.append("".join(text.plain[span.start:span.end] for span in text.spans
                                 if span.style.bgcolor is not None and span.style.bgcolor.number == 2))
    return found


@pytest.mark.slow
@needs_tmux
def test_chat_in_a_terminal_shows_the_unmasking_and_the_samplers_answers(tiny_checkpoint, loaded, tmp_path):
    config = replace(loaded.generation_config, steps=4)
    first = generate_text(loaded.model, loaded.tokenizer, ["hello"], config)[0]
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first}]
    second = conversation_answer(loaded, [*history, {"role": "user", "content": "again"}], config)
    repeated = conversation_answer(loaded, [*history, {"role": "user", "content": "again"},
                                            {"role": "assistant", "content": second},
                                            {"role": "user", "content": "hello"}], config)
    assert repeated != first and "\n" not in first + second  # premise: /reset changes the answer to "hello"
    command = shlex.join([sys.executable, "-m", "dllm.cli", "chat", str(tiny_checkpoint), "--device", "cpu",
                          "--steps", "4", "--step_delay", "0", "--show_steps", "True"])
    terminal = Terminal(f"dllm-chat-{tmp_path.name}", f"cd {shlex.quote(str(ROOT))} && {command}; "
                                                       "echo CHAT-EXITED $?; sleep 600")
    try:
        terminal.wait_for(lambda s: "you>" in s)
        for turn, count in (("hello", 1), ("again", 2), ("/reset", 2), ("hello", 3)):
            terminal.type(turn)
            screen = terminal.wait_for(lambda s: len(answers_on(s)) == count and s.rstrip().endswith("you>"))
        assert "you> hello" in screen and "you> again" in screen  # the prompt echo
        assert answers_on(screen) == [first.rstrip(), second.rstrip(), first.rstrip()]
        assert "conversation cleared" in screen
        steps = [line for line in screen.splitlines() if line.startswith("step ")]
        assert len(steps) >= 3 * 2 and MASK_GLYPH in steps[0]  # each answer drawn step by step, masks first
        # the tokens the latest step committed are highlighted: 8 positions over 4 steps, 2 on each step line
        assert [len(chars) for chars in highlighted(terminal.screen(ansi=True))] == [2] * len(steps)
        terminal.type("/settings steps=2 threshold=0.5")
        screen = terminal.wait_for(lambda s: "threshold=0.5" in s)
        assert "steps=2" in screen
        terminal.type("/quit")
        screen = terminal.wait_for(lambda s: "CHAT-EXITED" in s, timeout=30)
        assert "CHAT-EXITED 0" in screen
        (tmp_path / "chat-screen.txt").write_text(screen, encoding="utf-8")
    finally:
        terminal.close()


@pytest.mark.slow
@needs_tmux
def test_chat_on_a_demo_checkpoint_uses_its_saved_settings(short_demo_checkpoint, tmp_path):
    """``dllm chat outputs/demo`` with no sampler flag: the saved 7-token canvas, filled one token per step (each step
    line highlights exactly one new token), and the screen shows the sampler's answers to two demo prompts."""
    loaded = load_checkpoint(str(short_demo_checkpoint), CheckpointArguments(device="cpu"))
    assert (loaded.generation_config.gen_length, loaded.generation_config.steps) == (7, None)
    prompts = ["sort 8213", "reverse abc"]
    expected = [conversation_answer(loaded, [{"role": "user", "content": p}], loaded.generation_config).rstrip()
                for p in prompts]
    assert all(expected) and "\n" not in "".join(expected)  # premise: answers a screen line can show
    command = shlex.join([sys.executable, "-m", "dllm.cli", "chat", str(short_demo_checkpoint), "--device", "cpu",
                          "--step_delay", "0", "--show_steps", "True"])  # display flags only
    terminal = Terminal(f"dllm-demo-chat-{tmp_path.name}", f"cd {shlex.quote(str(ROOT))} && {command}; sleep 600")
    try:
        terminal.wait_for(lambda s: "you>" in s)
        for count, prompt in enumerate(prompts, start=1):
            terminal.type(prompt)
            screen = terminal.wait_for(lambda s: len(answers_on(s)) == count and s.rstrip().endswith("you>"))
            terminal.type("/reset")  # each prompt as a first turn, as the sampler answered it
            terminal.wait_for(lambda s: s.count("conversation cleared") == count)
        assert answers_on(screen) == expected
        drawn = highlighted(terminal.screen(ansi=True))
        assert 2 <= len(drawn) <= 2 * 7 and [len(chars) for chars in drawn] == [1] * len(drawn)
    finally:
        terminal.close()


@needs_tmux
def test_chat_screenshot_on_the_demo_checkpoint(screenshot_checkpoint, tmp_path):
    """``DLLM_WRITE_SCREENSHOTS=1``: the README's ``docs/images/chat.svg``, the trained demo checkpoint answering the
    demo's prompts in a terminal (one token per step, then blocks of 4), as tmux shows it, colours included."""
    from rich.console import Console
    from rich.text import Text

    loaded = load_checkpoint(str(screenshot_checkpoint), CheckpointArguments(device="cpu"))
    blocks = replace(loaded.generation_config, steps=4, block_size=4)
    expected = [generate_text(loaded.model, loaded.tokenizer, ["sort 8213"], loaded.generation_config)[0],
                generate_text(loaded.model, loaded.tokenizer, ["add 12+34"], blocks)[0]]
    assert expected == ["1238", "64"]  # a screenshot shows right answers (sums are written lowest digit first)
    command = shlex.join([sys.executable, "-m", "dllm.cli", "chat", str(screenshot_checkpoint), "--device", "cpu",
                          "--step_delay", "0", "--show_steps", "True"])
    terminal = Terminal(f"dllm-shot-{tmp_path.name}", f"cd {shlex.quote(str(ROOT))} && {command}; sleep 600")
    try:
        terminal.wait_for(lambda s: "you>" in s)
        for turn, count in (("sort 8213", 1), ("/reset", 1), ("/settings block_size=4 steps=4", 1),
                            ("add 12+34", 2)):
            terminal.type(turn)
            screen = terminal.wait_for(lambda s: len(answers_on(s)) == count and s.rstrip().endswith("you>"))
        assert answers_on(screen) == expected and "/image PATH" in " ".join(screen.split())
        ansi = terminal.screen(ansi=True)
        drawn = highlighted(ansi)
        assert [len(chars) for chars in drawn[:7]] == [1] * 7 and all(drawn)  # one token per step, then blocks
    finally:
        terminal.close()
    lines = ansi.rstrip().splitlines()
    start = next(i for i, line in enumerate(lines) if Text.from_ansi(line).plain.startswith("dllm chat with "))
    console = Console(record=True, width=terminal.width, file=io.StringIO())
    console.print(Text.from_ansi("\n".join(lines[start:])))  # from the greeting (not the weights' loading bar)
    console.save_svg(str(ROOT / "docs" / "images" / "chat.svg"), title="dllm chat")


def image_conversation_answer(loaded, messages: list[dict], config: DiffusionGenerationConfig) -> str:
    """What the sampler answers to a conversation with images, through the Qwen3-VL pipeline's own inputs."""
    from dllm.pipelines.qwen3_vl.generation import prepare_generation_inputs

    ids, mask, kwargs = prepare_generation_inputs(loaded.model, loaded.image_processor(), [messages],
                                                  config.gen_length)
    out = generate(loaded.model, ids, config, attention_mask=mask, model_kwargs=kwargs)
    return loaded.tokenizer.decode(answer_ids(out.sequences, ids.shape[1], config.eos_token_id)[0],
                                   skip_special_tokens=True)


@pytest.mark.slow
def test_piped_chat_attaches_an_image_to_the_next_turn(tiny_vl_checkpoint, tmp_path):
    """``/image PATH`` puts the image before the next user turn's text; later turns keep it in the conversation
    (and the prefix cache takes it); ``/reset`` drops it. Answers are the pipeline's own for each conversation."""
    from tests.helpers import noise_image

    path = tmp_path / "grid.png"
    noise_image(7).save(path)
    loaded = load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))
    config = replace(loaded.generation_config, cache="prefix")
    image_turn = {"role": "user", "content": [{"type": "image", "image": noise_image(7)},
                                              {"type": "text", "text": "What is it?"}]}
    first = image_conversation_answer(loaded, [image_turn], config)
    second = image_conversation_answer(loaded, [image_turn, {"role": "assistant", "content": first},
                                                {"role": "user", "content": "And now?"}], config)
    plain = conversation_answer(loaded, [{"role": "user", "content": "What is it?"}], config)
    assert first != plain  # premise: the image changes the answer
    result = subprocess.run([sys.executable, "-m", "dllm.cli", "chat", str(tiny_vl_checkpoint), "--device", "cpu",
                             "--cache", "prefix"], input=f"/image {path}\nWhat is it?\nAnd now?\n/reset\nWhat is it?\n",
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [a.replace("\n", "\\n") for a in (first, second, plain)]


def test_image_refusals_are_one_line_and_the_chat_goes_on(tiny_checkpoint, tiny_vl_checkpoint, loaded, tmp_path,
                                                         capsys):
    from dllm.inference.chat import HELP, Chat

    assert "/image PATH" in HELP
    text_chat = Chat(loaded)
    assert text_chat.handle(f"/image {tmp_path / 'x.png'}") is None and text_chat.image is None
    vl_chat = Chat(load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu")))
    for command in (f"/image {tmp_path / 'missing.png'}", "/image", "/image https://example.com/a.png"):
        assert vl_chat.handle(command) is None and vl_chat.image is None
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("dllm chat")] == [
        f"dllm chat: {tiny_checkpoint}: /image needs a vision-language checkpoint (model_type 'qwen3_vl'); this one "
        "is model_type 'llama' and takes text only",
        f"dllm chat: {tmp_path / 'missing.png'}: no such image file",
        "dllm chat: usage: /image PATH (an image file or a data:image/...;base64, URL)",
        "dllm chat: https://example.com/a.png: https URLs are not fetched; send the image inline as a data URL "
        "(data:image/png;base64,...)",
    ]
    assert text_chat.handle("hello") == conversation_answer(loaded, [{"role": "user", "content": "hello"}],
                                                            loaded.generation_config)


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A checkpoint whose answers take long enough to interrupt: 4096 positions, a saved 2000-position answer."""
    from tests.helpers import save_tiny_masked_lm

    path = save_tiny_masked_lm(tmp_path_factory.mktemp("checkpoints") / "slow", max_position_embeddings=4096)
    DiffusionGenerationConfig(gen_length=2000, block_size=8).save_pretrained(path)
    return path


@pytest.mark.slow
@needs_tmux
@pytest.mark.parametrize("leave", ["/quit", "C-d"])
def test_ctrl_c_during_an_answer_then_leaving_exits_cleanly(slow_checkpoint, tmp_path, leave):
    """Ctrl-C while the sampler runs stops it (the turn is dropped, the chat goes on); then ``/quit`` or Ctrl-D exits
    with status 0, not 134 ("terminate called without an active exception": a sampler thread left running)."""
    command = shlex.join([sys.executable, "-m", "dllm.cli", "chat", str(slow_checkpoint), "--device", "cpu",
                          "--step_delay", "0"])
    terminal = Terminal(f"dllm-interrupt-{tmp_path.name}", f"cd {shlex.quote(str(ROOT))} && {command}; "
                                                           "echo CHAT-EXITED $?; sleep 600")
    try:
        terminal.wait_for(lambda s: "you>" in s)
        terminal.type("hello")
        terminal.wait_for(lambda s: "block " in s)  # the sampler is drawing its blocks
        subprocess.run(["tmux", "send-keys", "-t", terminal.name, "C-c"], check=True)
        terminal.wait_for(lambda s: "(interrupted)" in s, timeout=60)
        if leave == "/quit":
            terminal.type("/quit")
        else:
            subprocess.run(["tmux", "send-keys", "-t", terminal.name, "C-d"], check=True)
        screen = terminal.wait_for(lambda s: "CHAT-EXITED" in s, timeout=60)
        assert "CHAT-EXITED 0" in screen and "terminate called" not in screen, screen
    finally:
        terminal.close()
