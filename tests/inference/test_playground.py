"""``dllm playground``: its handler without gradio (answers about an image, refusals), and in a real headless browser
(Debian's chromium driven by playwright): submit a prompt, watch the canvas, and get the sampler's own answer. The
browser tests skip unless gradio, playwright and chromium are installed (``make test-browser`` installs them).

The tiny checkpoints' weights are random: their answers are gibberish, but the page shows, colours and charts them
exactly as it would a trained model's, offline and in seconds. One browser test serves what ``dllm demo`` writes (a
short run) with no settings changed: the demo prompt gets the sampler's answer under the saved settings. With
``DLLM_WRITE_SCREENSHOTS=1`` one more browser
test asks the trained demo checkpoint (``DLLM_SCREENSHOT_CHECKPOINT``, else ``outputs/demo``) the demo's prompt and
writes the README's ``docs/images/playground.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from dllm.core.sampling import generate_text
from dllm.errors import UsageError
from dllm.inference.loading import CheckpointArguments, load_checkpoint
from dllm.inference.playground import Playground, _plot, canvas_html, step_colour
from tests.helpers import noise_image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


def test_canvas_colours_tokens_by_the_step_that_committed_them():
    html = canvas_html(["a", "<", "░"], [0, 3, None], total=4, newest=3)
    assert html.count('class="committed"') == 2 and html.count('class="masked"') == 1
    assert step_colour(0, 4) in html and step_colour(3, 4) in html and "&lt;" in html
    assert step_colour(0, 4) == "hsl(220, 75%, 80%)" and step_colour(3, 4) == "hsl(0, 75%, 80%)"


def test_plot_types_steps_as_labels_even_before_the_first_step():
    # the page is built with the empty frame and the browser keeps the axis types it was given first: an empty
    # frame's float columns made ``step`` quantitative, the ``#1`` labels NaN, and the chart empty
    gr = pytest.importorskip("gradio", reason="needs gradio: pip install -e '.[web]'")
    for per_step in ([], [4, 3]):
        value = gr.BarPlot(_plot(per_step), x="step", y="tokens committed").value
        assert value["datatypes"] == {"step": "nominal", "tokens committed": "quantitative"}
    assert gr.BarPlot(_plot([4, 3]), x="step", y="tokens committed").value["data"] == [["#1", 4], ["#2", 3]]


def test_handler_answers_about_an_image_like_the_pipeline(tiny_vl_checkpoint):
    """Without gradio: the page's settings (dual cache, 2 blocks) and image reach the sampler; one update per step,
    then the answer the Qwen3-VL pipeline gives; without an image the text answer."""
    from dataclasses import replace as change

    from dllm.pipelines.qwen3_vl.generation import answer_image_question

    loaded = load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))
    playground, image = Playground(loaded), noise_image(4)
    config, inputs = playground.prepare("What is it?", 8, 4, 4, 0, "dual", image)
    assert config == change(loaded.generation_config, steps=4, block_size=4, threshold=None, cache="dual")
    updates = list(playground.updates(config, inputs))
    expected = answer_image_question(loaded.model, loaded.image_processor(), image, "What is it?", config)
    assert len(updates) == 4 + 1 and updates[-1][1] == expected
    assert updates[-1][0].count('class="committed"') == 8  # the canvas: every answer position committed
    text = list(playground.updates(*playground.prepare("What is it?", 8, 4, 4, 0, "dual")))[-1][1]
    assert text == generate_text(loaded.model, loaded.tokenizer, ["What is it?"], config)[0] != expected


def test_handler_refuses_an_image_for_a_text_checkpoint_in_one_line(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    message = (f"{tiny_checkpoint}: an image needs a vision-language checkpoint (model_type 'qwen3_vl'); this one is "
               "model_type 'llama' and takes text only")
    with pytest.raises(UsageError) as refused:
        Playground(loaded).prepare("hi", 8, 8, 0, 0, "none", noise_image(1))
    assert str(refused.value) == message
    gr = pytest.importorskip("gradio", reason="the page itself needs gradio: pip install -e '.[web]'")
    with pytest.raises(gr.Error) as shown:
        list(Playground(loaded).run("hi", 8, 8, 0, 0, "none", noise_image(1)))
    assert shown.value.message == message


def test_the_page_has_an_image_box_for_a_vision_checkpoint_only(tiny_checkpoint, tiny_vl_checkpoint):
    gr = pytest.importorskip("gradio", reason="needs gradio: pip install -e '.[web]'")
    from dllm.inference.playground import build_app

    for checkpoint, boxes in ((tiny_checkpoint, []), (tiny_vl_checkpoint, ["image"])):
        page = build_app(load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu")))
        assert [b.elem_id for b in page.blocks.values() if isinstance(b, gr.Image)] == boxes


def test_the_sliders_stop_at_the_models_positions(tiny_checkpoint, tmp_path):
    gr = pytest.importorskip("gradio", reason="needs gradio: pip install -e '.[web]'")
    from dllm.inference.playground import build_app
    from tests.helpers import save_tiny_masked_lm

    short = save_tiny_masked_lm(tmp_path / "short", gen_length=8, max_position_embeddings=64)
    for checkpoint, longest in ((tiny_checkpoint, 255), (short, 63)):  # one position is left for the prompt
        page = build_app(load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu")))
        sliders = {b.elem_id: b.maximum for b in page.blocks.values() if isinstance(b, gr.Slider)}
        assert (sliders["length"], sliders["steps"], sliders["block"]) == (longest, longest, longest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="needs gradio: pip install -e '.[web]' (make test-browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (make test-browser)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install -y chromium (make test-browser)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


@contextmanager
def served_page(browser, loaded) -> Iterator:
    """A browser page (1200 x 900) showing the playground of ``loaded``, served until the block ends."""
    from dllm.inference.playground import build_app

    port = free_port()
    page_app = build_app(loaded)
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        yield page
    finally:
        page_app.close()


def ask(page, prompt: str) -> str:
    """Type ``prompt``, press Generate, and return the answer the page shows once done."""
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#answer textarea')?.value.length > 0", timeout=120_000)
    return page.locator("#answer textarea").input_value()


def step_colours_and_bars(page, steps: int) -> tuple[list[str], list[tuple[str, float]]]:
    """The step (``"1"``...) that coloured each committed token of the canvas, and once the bar chart has ``steps``
    bars (vega's SVG), each bar's label and height."""
    coloured = page.locator("#canvas-view .committed").evaluate_all("spans => spans.map(s => s.dataset.step)")
    page.wait_for_function(f"document.querySelectorAll('#plot g.mark-rect path').length === {steps}",
                           timeout=30_000)
    bars = page.locator("#plot g.mark-rect path").evaluate_all(
        "bars => bars.map(b => [b.getAttribute('aria-label'), b.getBBox().height])")
    return coloured, [tuple(bar) for bar in bars]


def check_chart(coloured: list[str], bars: list[tuple[str, float]], steps: int) -> None:
    """One bar per step, in step order, as tall as the tokens that step committed (coloured by it on the canvas)."""
    assert sorted(set(coloured), key=int) == [str(step) for step in range(1, steps + 1)]
    assert [label for label, _ in bars] == [
        f"step: #{step}; tokens committed: {coloured.count(str(step))}" for step in range(1, steps + 1)]
    assert all(height > 0 for _, height in bars)


def test_playground_in_a_browser_answers_like_the_sampler(browser, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    expected = generate_text(loaded.model, loaded.tokenizer, ["hello"],
                             replace(loaded.generation_config, steps=4, block_size=4))[0]
    default = generate_text(loaded.model, loaded.tokenizer, ["hello"], loaded.generation_config)[0]
    assert expected.strip() and expected != default  # premise: the page's settings reach the sampler
    with served_page(browser, loaded) as page:
        page.locator("#steps input[type=number]").fill("4")
        page.locator("#block input[type=number]").fill("4")
        page.locator("#block input[type=number]").press("Enter")
        assert ask(page, "hello") == expected
        coloured, bars = step_colours_and_bars(page, 4)
        assert len(coloured) == 8  # 8 positions, 4 steps: each coloured by its step
        check_chart(coloured, bars, 4)
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").stat().st_size > 10_000


def ask_the_demo_prompt(browser, checkpoint: Path, screenshot: Path, answer: str | None = None) -> None:
    """A ``dllm demo`` checkpoint's page with its saved settings (no change on the page): the demo prompt gets the
    sampler's answer (``answer`` when given), each of its 7 positions coloured by the one step that committed it."""
    loaded = load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu"))
    assert (loaded.generation_config.gen_length, loaded.generation_config.steps) == (7, None)
    expected = generate_text(loaded.model, loaded.tokenizer, ["sort 8213"], loaded.generation_config)[0]
    assert expected and expected == (answer or expected)
    with served_page(browser, loaded) as page:
        assert ask(page, "sort 8213") == expected
        coloured, bars = step_colours_and_bars(page, 7)
        assert len(coloured) == 7  # one token per step
        check_chart(coloured, bars, 7)
        page.screenshot(path=str(screenshot), full_page=True)


def test_playground_on_a_demo_checkpoint_uses_its_saved_settings(browser, short_demo_checkpoint, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    ask_the_demo_prompt(browser, short_demo_checkpoint, tmp_path / "playground-demo.png")
    assert (tmp_path / "playground-demo.png").stat().st_size > 10_000


def test_playground_screenshot_on_the_demo_checkpoint(browser, screenshot_checkpoint, monkeypatch):
    """``DLLM_WRITE_SCREENSHOTS=1``: the README's ``docs/images/playground.png``, the trained demo checkpoint
    answering the demo's prompt with its saved settings (one token per step, each coloured by its step)."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    ask_the_demo_prompt(browser, screenshot_checkpoint, ROOT / "docs" / "images" / "playground.png",
                        answer="1238")  # a screenshot shows a right answer


def test_playground_in_a_browser_answers_about_an_uploaded_image(browser, tiny_vl_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from dllm.pipelines.qwen3_vl.generation import answer_image_question

    loaded = load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))
    noise_image(6).save(tmp_path / "upload.png")
    expected = answer_image_question(loaded.model, loaded.image_processor(), noise_image(6), "What is it?",
                                     loaded.generation_config)
    assert expected != generate_text(loaded.model, loaded.tokenizer, ["What is it?"], loaded.generation_config)[0]
    with served_page(browser, loaded) as page:
        page.locator("#image input[type=file]").set_input_files(str(tmp_path / "upload.png"))
        page.wait_for_selector("#image img", timeout=30_000)  # the upload is shown before it is sent
        assert ask(page, "What is it?") == expected
        page.screenshot(path=str(tmp_path / "playground-image.png"), full_page=True)
