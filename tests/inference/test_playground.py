"""``dllm playground``: its handler without gradio (answers about an image, refusals), and in a real headless browser
(Debian's chromium driven by playwright): submit a prompt, watch the canvas, and get the sampler's own answer. The
browser tests skip unless gradio, playwright and chromium are installed (``make test-browser`` installs them)."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import replace

import pytest

from dllm.core.sampling import generate_text
from dllm.errors import UsageError
from dllm.inference.loading import CheckpointArguments, load_checkpoint
from dllm.inference.playground import Playground, _plot, canvas_html, step_colour
from tests.helpers import noise_image

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
    gr = pytest.importorskip("gradio", reason="needs gradio: pip install 'dllm[web]'")
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
    gr = pytest.importorskip("gradio", reason="the page itself needs gradio: pip install 'dllm[web]'")
    with pytest.raises(gr.Error) as shown:
        list(Playground(loaded).run("hi", 8, 8, 0, 0, "none", noise_image(1)))
    assert shown.value.message == message


def test_the_page_has_an_image_box_for_a_vision_checkpoint_only(tiny_checkpoint, tiny_vl_checkpoint):
    gr = pytest.importorskip("gradio", reason="needs gradio: pip install 'dllm[web]'")
    from dllm.inference.playground import build_app

    for checkpoint, boxes in ((tiny_checkpoint, []), (tiny_vl_checkpoint, ["image"])):
        page = build_app(load_checkpoint(str(checkpoint), CheckpointArguments(device="cpu")))
        assert [b.elem_id for b in page.blocks.values() if isinstance(b, gr.Image)] == boxes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="needs gradio: pip install 'dllm[web]' (make test-browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (make test-browser)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install -y chromium (make test-browser)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def test_playground_in_a_browser_answers_like_the_sampler(browser, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from dllm.inference.playground import build_app

    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    expected = generate_text(loaded.model, loaded.tokenizer, ["hello"],
                             replace(loaded.generation_config, steps=4, block_size=4))[0]
    default = generate_text(loaded.model, loaded.tokenizer, ["hello"], loaded.generation_config)[0]
    assert expected.strip() and expected != default  # premise: the page's settings reach the sampler
    port = free_port()
    page_app = build_app(loaded)
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#steps input[type=number]").fill("4")
        page.locator("#block input[type=number]").fill("4")
        page.locator("#block input[type=number]").press("Enter")
        page.locator("#prompt textarea").fill("hello")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#answer textarea')?.value.length > 0", timeout=120_000)
        assert page.locator("#answer textarea").input_value() == expected
        steps = page.locator("#canvas-view .committed").evaluate_all("spans => spans.map(s => s.dataset.step)")
        assert sorted(set(steps)) == ["1", "2", "3", "4"]  # 8 positions, 4 steps: coloured by their step
        # the bar chart draws one bar per step (vega's SVG), in step order, as tall as the tokens it committed
        page.wait_for_function("document.querySelectorAll('#plot g.mark-rect path').length === 4", timeout=30_000)
        bars = page.locator("#plot g.mark-rect path").evaluate_all(
            "bars => bars.map(b => [b.getAttribute('aria-label'), b.getBBox().height])")
        assert [label for label, _ in bars] == [
            f"step: #{step}; tokens committed: {steps.count(str(step))}" for step in range(1, 5)]
        assert all(height > 0 for _, height in bars)
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").stat().st_size > 10_000
    finally:
        page_app.close()


def test_playground_in_a_browser_answers_about_an_uploaded_image(browser, tiny_vl_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from dllm.inference.playground import build_app
    from dllm.pipelines.qwen3_vl.generation import answer_image_question

    loaded = load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))
    noise_image(6).save(tmp_path / "upload.png")
    expected = answer_image_question(loaded.model, loaded.image_processor(), noise_image(6), "What is it?",
                                     loaded.generation_config)
    assert expected != generate_text(loaded.model, loaded.tokenizer, ["What is it?"], loaded.generation_config)[0]
    port = free_port()
    page_app = build_app(loaded)
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#image input[type=file]").set_input_files(str(tmp_path / "upload.png"))
        page.wait_for_selector("#image img", timeout=30_000)  # the upload is shown before it is sent
        page.locator("#prompt textarea").fill("What is it?")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#answer textarea')?.value.length > 0", timeout=120_000)
        assert page.locator("#answer textarea").input_value() == expected
        page.screenshot(path=str(tmp_path / "playground-image.png"), full_page=True)
    finally:
        page_app.close()
