"""``dllm serve`` with images, through the real ``openai`` client, on a tiny saved Qwen3-VL: OpenAI ``image_url``
content parts (base64 data URLs; local files only inside ``--allowed_local_media_path``) give the Qwen3-VL
pipeline's own answers, under the caches and guidance, streamed per block and batched without mix-ups; every URL
the server will not read, and any image sent to a text checkpoint, is a one-line 400 naming the part."""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import replace
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from dllm.inference.loading import CheckpointArguments, load_checkpoint  # noqa: E402
from dllm.inference.server import ServeArguments, create_app  # noqa: E402
from tests.helpers import noise_image, served  # noqa: E402

MODEL = "tiny-vl"  # the checkpoint folder's name


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_message(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def vl_server(tiny_vl_checkpoint, tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    noise_image(9).save(media / "nine.png")
    loaded = load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))
    app = create_app(loaded, ServeArguments(max_tokens_limit=16, batch_window_ms=200,
                                            allowed_local_media_path=str(media)))
    with served(app) as url:
        http = httpx.Client(trust_env=False, timeout=300)  # no proxy from the environment for 127.0.0.1
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, http_client=http)
        yield SimpleNamespace(url=url, loaded=loaded, serving=app.state.serving, client=client, media=media)
        http.close()


def expected(server, image, question: str, **overrides) -> str:
    """The answer the Qwen3-VL pipeline gives this question about this image alone (None: text only)."""
    from dllm.pipelines.qwen3_vl.generation import answer_image_question

    loaded = server.loaded
    return answer_image_question(loaded.model, loaded.image_processor(), image, question,
                                 replace(loaded.generation_config, **overrides))


def chat(server, messages, **kwargs):
    return server.client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def test_an_image_question_gets_the_pipelines_answer_under_every_setting(vl_server):
    image = noise_image(1)
    response = chat(vl_server, image_message(data_url(image), "What is it?"))
    assert response.choices[0].message.content == expected(vl_server, image, "What is it?")
    from dllm.pipelines.qwen3_vl.generation import prepare_generation_inputs

    ids, _, _ = prepare_generation_inputs(vl_server.loaded.model, vl_server.loaded.image_processor(),
                                          [[{"role": "user", "content": [{"type": "image", "image": image},
                                                                         {"type": "text", "text": "What is it?"}]}]],
                                          8)
    assert response.usage.prompt_tokens == ids.shape[1]  # the image's placeholder tokens counted
    answers = {response.choices[0].message.content}
    for settings in ({"cache": "prefix"}, {"cache": "dual", "cfg_scale": 1.0}):
        guided = chat(vl_server, image_message(data_url(image), "What is it?"), extra_body=settings)
        assert guided.choices[0].message.content == expected(vl_server, image, "What is it?", **settings), settings
        answers.add(guided.choices[0].message.content)
    assert len(answers) == 3  # the settings reached the sampler


def test_an_image_request_is_processed_once(vl_server, monkeypatch):
    """Counting its tokens (usage, the positions check) and answering it use one run of the processor."""
    from dllm.inference import engine

    calls, real = [], engine.sampler_inputs
    monkeypatch.setattr(engine, "sampler_inputs", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    image = noise_image(2)
    response = chat(vl_server, image_message(data_url(image), "What is it?"))
    assert response.choices[0].message.content == expected(vl_server, image, "What is it?")
    assert len(calls) == 1


def test_an_image_answer_streams_block_by_block(vl_server):
    image = noise_image(2)
    answer = expected(vl_server, image, "Stream it")
    chunks = list(chat(vl_server, image_message(data_url(image), "Stream it"), stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(answer) == 8  # premise: no EOS, one character per token, so each block of 4 adds 4 characters
    assert pieces == [answer[:4], answer[4:]]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_image_and_text_requests_are_batched_by_kind_without_mix_ups(vl_server):
    questions = [(noise_image(3), "What?"), (noise_image(4), "And this one, what is it?"), (noise_image(5), "Hm"),
                 (None, "A text question")]
    alone = [expected(vl_server, image, question) for image, question in questions]
    assert len(set(alone)) == 4  # different answers, so a mix-up would show

    async def ask_all():
        async with httpx.AsyncClient(trust_env=False, timeout=300) as http:
            client = openai.AsyncOpenAI(base_url=f"{vl_server.url}/v1", api_key="unused", max_retries=0,
                                        http_client=http)
            return await asyncio.gather(*(client.chat.completions.create(
                model=MODEL, messages=image_message(data_url(image), question) if image is not None
                else [{"role": "user", "content": question}]) for image, question in questions))

    before = vl_server.serving.engine.sampler_calls
    responses = asyncio.run(ask_all())
    assert [r.choices[0].message.content for r in responses] == alone
    assert 2 <= vl_server.serving.engine.sampler_calls - before < 4  # images and text never share a call


def test_local_files_only_inside_the_allowed_folder(vl_server, tmp_path):
    inside = expected(vl_server, noise_image(9), "What?")
    for url in ("nine.png", str(vl_server.media / "nine.png"), (vl_server.media / "nine.png").as_uri()):
        assert chat(vl_server, image_message(url, "What?")).choices[0].message.content == inside, url
    noise_image(9).save(tmp_path / "outside.png")
    with pytest.raises(openai.BadRequestError) as refused:
        chat(vl_server, image_message(str(tmp_path / "outside.png"), "What?"))
    assert refused.value.body["message"] == (f"messages[0].content[0].image_url.url: only image files inside "
                                             f"{vl_server.media.resolve()} are accepted")


@pytest.mark.parametrize("url,message", [
    ("https://example.com/cat.png", "messages[0].content[0].image_url.url: https URLs are not fetched; send the "
                                    "image inline as a data URL (data:image/png;base64,...)"),
    ("data:image/png;base64,%%%", "messages[0].content[0].image_url.url: the data URL is not valid base64"),
    ("data:text/plain;base64,aGk=", "messages[0].content[0].image_url.url: the data URL holds 'text/plain', "
                                    "not an image"),
])
def test_urls_the_server_will_not_read_are_400s(vl_server, url, message):
    with pytest.raises(openai.BadRequestError) as refused:
        chat(vl_server, image_message(url, "What?"))
    assert refused.value.body["message"].startswith(message) and refused.value.body["param"] == "messages"
    assert "\n" not in refused.value.body["message"]


def test_without_a_media_folder_local_paths_are_refused(tiny_vl_checkpoint, vl_server):
    from fastapi.testclient import TestClient

    app = create_app(vl_server.loaded, ServeArguments())
    body = {"model": MODEL, "messages": image_message(str(vl_server.media / "nine.png"), "What?")}
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "messages[0].content[0].image_url.url: local image files are not accepted here; send the image inline as a "
        "data URL (data:image/png;base64,...)")


def test_an_image_for_a_text_checkpoint_is_a_400(tiny_checkpoint):
    from fastapi.testclient import TestClient

    app = create_app(load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu")), ServeArguments())
    body = {"model": "tiny-dllm", "messages": [{"role": "system", "content": "Be brief."},
                                               *image_message(data_url(noise_image(1)), "What?")]}
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=body)
        assert client.post("/v1/chat/completions", json={**body, "messages": body["messages"][:1] + [
            {"role": "user", "content": [{"type": "text", "text": "What?"}]}]}).status_code == 200
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "tiny-dllm: messages[1].content[0] (an image) needs a vision-language checkpoint (model_type "
                   "'qwen3_vl'); this one is model_type 'llama' and takes text only",
        "type": "invalid_request_error", "param": "messages", "code": None}
