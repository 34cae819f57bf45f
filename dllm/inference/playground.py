"""``dllm playground``: a web page (gradio) to watch a checkpoint's answers unmask.

    pip install 'dllm[web]'
    dllm playground outputs/demo --port 7860          # then open http://127.0.0.1:7860

Type a prompt (one user turn through the chat template), choose the answer length, steps, block size, threshold
and cache, and press Generate. The answer canvas is redrawn after every denoising step: masked positions as
``░``, each committed token coloured by the step that committed it (blue early, red late), the newest ones
outlined. The sampler runs in a worker thread and hands over each finished block with its steps (the sampler's
``on_block`` callback), so the page updates while later blocks are still being computed. A bar chart shows how
many tokens each step committed (with a threshold, confident steps commit many). The final answer is the one
:func:`~dllm.core.sampling.generate_text` gives for the same prompt and settings.

With a vision-language checkpoint (Qwen3-VL) an image box sits next to the prompt: an image put there goes with
the prompt (before its text), under every sampler setting.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from dllm.core.sampling import CACHE_MODES, DiffusionGenerationConfig, StepRecord, answer_ids, generate
from dllm.core.sampling.config import SamplerSettingError
from dllm.errors import UsageError
from dllm.inference.background import SamplerThread
from dllm.inference.chat import MASK_GLYPH, token_pieces
from dllm.inference.engine import (
    VisionPrompt,
    check_fits,
    check_prompt_chars,
    encode_chats,
    longest_token_chars,
    model_positions,
    sampler_inputs,
)
from dllm.data.images import load_image
from dllm.inference.loading import (
    CheckpointArguments,
    LoadedCheckpoint,
    SamplerOptions,
    check_port,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)


SLIDER_MAX = 256
"""The longest answer the page's sliders offer (fewer when the model has fewer positions)."""


@dataclass
class PlaygroundArguments:
    """Where the page is served."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to listen on."})


def step_colour(step: int, total: int) -> str:
    """A CSS colour for a token committed at ``step`` (0-based) of ``total``: hue 220 (blue) to 0 (red)."""
    hue = 220 if total <= 1 else round(220 * (1 - step / (total - 1)))
    return f"hsl({hue}, 75%, 80%)"


def canvas_html(pieces: list[str], committed_at: list[int | None], total: int, newest: int) -> str:
    """The answer canvas as HTML: ``pieces[i]`` coloured by the step that committed it (``None``: masked)."""
    spans = []
    for piece, step in zip(pieces, committed_at):
        if step is None:
            spans.append(f'<span class="masked" style="color:#999">{MASK_GLYPH}</span>')
            continue
        outline = ";outline:2px solid #222" if step == newest else ""
        spans.append(f'<span class="committed" data-step="{step + 1}" title="step {step + 1}" style="background:'
                     f'{step_colour(step, total)}{outline};padding:0 1px">{html.escape(piece) or "&nbsp;"}</span>')
    return ('<div id="canvas-view" style="font-family:monospace;font-size:1.6em;white-space:pre-wrap;'
            f'letter-spacing:2px">{"".join(spans)}</div>')


def _records(loaded: LoadedCheckpoint, inputs: tuple, config: DiffusionGenerationConfig,
             ) -> Iterator[StepRecord | list[int]]:
    """Each step's record as soon as its block is finished, then the answer ids (before EOS); ``inputs`` are
    :func:`~dllm.inference.engine.sampler_inputs`' for one prompt."""
    ids, mask, kwargs = inputs

    def work(on_block: Any) -> list[int]:
        out = generate(loaded.model, ids, replace(config, record_history=True), attention_mask=mask,
                       on_block=on_block, model_kwargs=kwargs)
        return answer_ids(out.sequences.cpu(), ids.shape[1], config.eos_token_id)[0]

    run = SamplerThread(loaded.model, work, name="dllm-playground-sampler")
    try:
        for _index, _x, steps in run.blocks():
            yield from steps
    finally:  # the page went away (the generator is closed): the sampler stops at its next forward
        run.stop()
    yield run.result()


class Playground:
    """The page's handler: settings in, a stream of (canvas, answer, tokens-per-step) updates out."""

    def __init__(self, loaded: LoadedCheckpoint):
        self.loaded = loaded
        self.most_chars = longest_token_chars(loaded.tokenizer)

    def settings(self, gen_length: float, steps: float, block_size: float, threshold: float,
                 cache: str) -> DiffusionGenerationConfig:
        """The checkpoint's settings with the page's (0 block size or threshold: off).

        Raises:
            SamplerSettingError: a setting the sampler refuses, naming it.
        """
        return replace(self.loaded.generation_config, gen_length=int(gen_length), steps=int(steps),
                       block_size=int(block_size) or None, threshold=float(threshold) or None, cache=cache,
                       progress=False)

    def prepare(self, prompt: str, gen_length: float, steps: float, block_size: float, threshold: float,
                cache: str, image: Any = None) -> tuple[DiffusionGenerationConfig, tuple]:
        """The settings and the sampler's inputs for ``prompt`` (with ``image`` before its text, if given).

        Raises:
            ValueError: a setting the sampler refuses; :class:`~dllm.errors.UsageError` (a ``ValueError``): an
                image for a checkpoint that takes none, or one that cannot be read, or a prompt and answer beyond
                the model's positions (:class:`~dllm.inference.engine.ContextLengthError`).
        """
        config = self.settings(gen_length, steps, block_size, threshold, cache)
        model = self.loaded.model
        check_prompt_chars(len(prompt), self.most_chars, model_positions(model.config), "the prompt")
        if image is None:
            ids = encode_chats(self.loaded.tokenizer, [[{"role": "user", "content": prompt}]])[0]
            inputs = sampler_inputs(model, [ids], config.gen_length, config.pad_token_id)
        else:
            processor = self.loaded.image_processor("an image")
            content = [{"type": "image", "image": load_image(image, "the image")}, {"type": "text", "text": prompt}]
            inputs = sampler_inputs(model, [VisionPrompt([{"role": "user", "content": content}])],
                                    config.gen_length, config.pad_token_id, processor)
        check_fits(model.config, inputs[0].shape[1], config.gen_length)
        return config, inputs

    def updates(self, config: DiffusionGenerationConfig, inputs: tuple) -> Iterator[tuple[str, str, Any]]:
        """The canvas after every step, then the answer, as (canvas HTML, answer, tokens-per-step) triples."""
        prompt_length, size = inputs[0].shape[1], config.gen_length
        committed_at: list[int | None] = [None] * size
        per_step: list[int] = []
        pieces = [MASK_GLYPH] * size
        for item in _records(self.loaded, inputs, config):
            if isinstance(item, list):  # the answer ids: done
                answer = self.loaded.tokenizer.decode(item, skip_special_tokens=True)
                yield canvas_html(pieces, committed_at, len(per_step), -1), answer, _plot(per_step)
                return
            new = item.committed[0, prompt_length:].tolist()
            for position, flag in enumerate(new):
                if flag:
                    committed_at[position] = len(per_step)
            per_step.append(sum(new))
            pieces = token_pieces(self.loaded.tokenizer, item.tokens[0, prompt_length:].tolist(),
                                  config.mask_token_id)
            yield canvas_html(pieces, committed_at, config.steps or size, len(per_step) - 1), "", _plot(per_step)

    def run(self, prompt: str, gen_length: float, steps: float, block_size: float, threshold: float,
            cache: str, image: Any = None) -> Iterator[tuple[str, str, Any]]:
        """The page's handler: :meth:`prepare` then :meth:`updates`; a refused setting or image is shown on the page
        as one line (``gradio.Error``)."""
        import gradio as gr

        try:
            config, inputs = self.prepare(prompt, gen_length, steps, block_size, threshold, cache, image)
        except SamplerSettingError as err:
            raise gr.Error(f"{err.field} {err.message}") from err
        except ValueError as err:  # UsageError included
            raise gr.Error(str(err)) from err
        yield from self.updates(config, inputs)


def _plot(per_step: list[int]) -> Any:
    """The bar chart's data: one row per step, ``step`` a label (``#1``, ``#2``...), ``tokens committed`` a count.

    The dtypes are explicit: the page is built with the empty frame, and an empty ``pd.DataFrame`` has float
    columns, so gradio typed ``step`` as quantitative and the browser kept that linear axis, on which the
    later ``#1`` labels are NaN: the chart stayed empty (axes only) however many steps had run.
    """
    import pandas as pd

    # steps as labels (a categorical axis, in order), not numbers to interpolate between
    return pd.DataFrame({"step": pd.Series([f"#{i}" for i in range(1, len(per_step) + 1)], dtype=str),
                         "tokens committed": pd.Series(per_step, dtype="int64")})


def build_app(loaded: LoadedCheckpoint) -> Any:
    """The gradio ``Blocks`` page for ``loaded`` (not launched)."""
    import gradio as gr

    playground, config = Playground(loaded), loaded.generation_config
    if loaded.takes_images:
        loaded.image_processor()  # a vision checkpoint without its processor fails here, before the page is up
    with gr.Blocks(title=f"dllm playground: {loaded.default_name}", analytics_enabled=False) as page:
        gr.Markdown(f"### dllm playground: `{loaded.default_name}`\nMasked positions are `{MASK_GLYPH}`; each "
                    "token is coloured by the step that committed it (blue early, red late), the newest outlined.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="sort 8213", elem_id="prompt", scale=4)
            image = gr.Image(type="pil", label="Image (optional)", elem_id="image", scale=2, height=160) \
                if loaded.takes_images else None
            button = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
        longest = min(SLIDER_MAX, (model_positions(loaded.model.config) or SLIDER_MAX + 1) - 1)  # a prompt token
        with gr.Row():
            gen_length = gr.Slider(1, longest, value=config.gen_length, step=1, label="answer length",
                                   elem_id="length")
            steps = gr.Slider(1, longest, value=config.steps or config.gen_length, step=1, label="steps",
                              elem_id="steps")
            block = gr.Slider(0, longest, value=config.block_size or 0, step=1, label="block size (0: one block)",
                              elem_id="block")
            threshold = gr.Slider(0, 1, value=config.threshold or 0, step=0.05, label="threshold (0: off)",
                                  elem_id="threshold")
            cache = gr.Dropdown(list(CACHE_MODES), value=config.cache, label="cache", elem_id="cache")
        canvas = gr.HTML(canvas_html([MASK_GLYPH] * config.gen_length, [None] * config.gen_length, 1, -1),
                         elem_id="canvas")
        answer = gr.Textbox(label="Answer", elem_id="answer", interactive=False)
        # y from 0 (gradio's default scale leaves out zero: the smallest count would be a bar of no height)
        plot = gr.BarPlot(_plot([]), x="step", y="tokens committed", title="tokens committed per step",
                          y_lim=[0, None], elem_id="plot")
        inputs = [prompt, gen_length, steps, block, threshold, cache] + ([image] if image is not None else [])
        button.click(playground.run, inputs, [canvas, answer, plot])
        prompt.submit(playground.run, inputs, [canvas, answer, plot])
    return page


def main(argv: list[str] | None = None) -> None:
    """Run ``dllm playground`` with command-line ``argv`` until interrupted.

    Raises:
        UsageError: a checkpoint that cannot be loaded or has no chat template, a bad option.
    """
    checkpoint, _, (args, load_args, options) = parse_verb_args(
        "dllm playground", sys.argv[1:] if argv is None else argv,
        (PlaygroundArguments, CheckpointArguments, SamplerOptions))
    check_port(args.port)
    loaded = load_checkpoint(checkpoint, load_args, **sampler_overrides(options))
    if loaded.tokenizer.chat_template is None:
        raise UsageError(f"{checkpoint}: the tokenizer has no chat template")
    build_app(loaded).launch(server_name=args.host, server_port=args.port, show_error=True)
