"""``dllm serve`` through the real ``openai`` client, on 127.0.0.1 (a free port) and the tiny checkpoint: answers
equal the sampler's own, streaming per block, OpenAI-shaped errors, and concurrent requests batched without
mixing them up."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from dllm.core.sampling import answer_ids, encode_prompt, generate  # noqa: E402
from dllm.inference.loading import CheckpointArguments, load_checkpoint  # noqa: E402
from dllm.inference.server import ServeArguments, create_app  # noqa: E402
from tests.helpers import served  # noqa: E402

MODEL = "tiny-dllm"  # the checkpoint folder's name


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    app = create_app(loaded, ServeArguments(max_tokens_limit=16, batch_window_ms=50))
    with served(app) as url:
        yield SimpleNamespace(url=url, loaded=loaded, serving=app.state.serving)


@pytest.fixture(scope="module")
def client(server):
    http = httpx.Client(trust_env=False, timeout=120)  # no proxy from the environment for 127.0.0.1
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, http_client=http)
    http.close()


def expected_ids(server, prompt: str, **overrides) -> list[int]:
    """The answer ids (before EOS) the sampler gives this user prompt alone."""
    loaded = server.loaded
    config = replace(loaded.generation_config, **overrides)
    ids = encode_prompt(loaded.tokenizer, prompt)
    out = generate(loaded.model, torch.tensor([ids]), config)
    return answer_ids(out.sequences, len(ids), config.eos_token_id)[0]


def expected(server, prompt: str, **overrides) -> tuple[str, int]:
    """The answer text the sampler gives this user prompt alone, and its token count."""
    answer = expected_ids(server, prompt, **overrides)
    return server.loaded.tokenizer.decode(answer, skip_special_tokens=True), len(answer)


def chat(client, prompt: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], **kwargs)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.url}/health", trust_env=False).json() == {"status": "ok"}


def test_chat_completion_is_the_samplers_answer(server, client):
    response = chat(client, "hello there", temperature=0)
    text, count = expected(server, "hello there")  # saved settings: gen_length 8
    assert response.choices[0].message.content == text
    assert response.choices[0].finish_reason in ("stop", "length")
    prompt_tokens = len(encode_prompt(server.loaded.tokenizer, "hello there"))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, count)
    assert response.model == MODEL and response.object == "chat.completion"

    short = chat(client, "hello there", max_tokens=4, extra_body={"steps": 2, "block_size": 2, "cache": "prefix"})
    assert short.choices[0].message.content == expected(server, "hello there", gen_length=4, steps=2, block_size=2,
                                                        cache="prefix")[0]


def test_text_completion_and_stop(server, client):
    loaded = server.loaded
    ids = loaded.tokenizer("abc")["input_ids"]  # raw text, no chat template
    out = generate(loaded.model, torch.tensor([ids]), loaded.generation_config)
    text = loaded.tokenizer.decode(answer_ids(out.sequences, len(ids), loaded.generation_config.eos_token_id)[0],
                                   skip_special_tokens=True)
    response = client.completions.create(model=MODEL, prompt=["abc", "abc"], temperature=0)
    assert [c.text for c in response.choices] == [text, text] and response.usage.prompt_tokens == 2 * len(ids)
    stop = text[3]
    stopped = client.completions.create(model=MODEL, prompt="abc", stop=[stop])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_streaming_chat_sends_one_chunk_per_finished_block(server, client):
    settings = dict(block_size=4)  # gen_length 8: two blocks
    answer = expected_ids(server, "stream me", **settings)
    decode = server.loaded.tokenizer.decode
    blocks = [decode(answer[:4], skip_special_tokens=True), decode(answer[4:], skip_special_tokens=True)]
    assert all(blocks), blocks  # the premise: both blocks add text
    chunks = list(chat(client, "stream me", stream=True, stream_options={"include_usage": True},
                       extra_body=settings))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == blocks
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(answer)
    with httpx.stream("POST", f"{server.url}/v1/completions", trust_env=False, timeout=120,
                      json={"model": MODEL, "prompt": "abc", "stream": True, **settings}) as raw:
        events = [line for line in raw.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {b["object"] for b in bodies} == {"text_completion"}
    assert bodies[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_errors_have_openai_shape_and_the_server_stays_up(server, client):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.status_code == 404 and unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        chat(client, "hi", max_tokens=17)
    assert too_long.value.body["param"] == "max_tokens" and "limit (16)" in too_long.value.body["message"]
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=MODEL, messages=[])
    assert empty.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as typo:
        chat(client, "hi", extra_body={"stepz": 2})
    assert typo.value.body["param"] == "stepz"
    with pytest.raises(openai.BadRequestError) as steps:
        chat(client, "hi", max_tokens=4, extra_body={"steps": 5})
    assert steps.value.body["param"] == "steps"
    malformed = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"model": ', trust_env=False,
                           headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert set(malformed.json()["error"]) == {"message", "type", "param", "code"}
    assert chat(client, "still up?").choices[0].message.content == expected(server, "still up?")[0]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    prompts = [("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + i % 7)) + str(i) for i in range(32)]
    lengths = [4 if i % 2 else 8 for i in range(32)]
    alone = [expected(server, p, gen_length=n)[0] for p, n in zip(prompts, lengths)]
    assert len(set(alone)) >= 24  # answers differ, so a mix-up would show

    async def ask_all():
        async with httpx.AsyncClient(trust_env=False, timeout=300) as http:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                                        http_client=http)
            return await asyncio.gather(*(
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                               max_tokens=n, temperature=0)
                for p, n in zip(prompts, lengths)))

    calls_before = server.serving.engine.sampler_calls
    responses = asyncio.run(ask_all())
    calls = server.serving.engine.sampler_calls - calls_before
    assert [r.choices[0].message.content for r in responses] == alone
    assert 2 <= calls < 32, calls  # two answer lengths never share a call; the rest did share


def test_a_demo_checkpoint_is_served_with_its_saved_settings(short_demo_checkpoint):
    """What ``dllm demo`` writes, served with no sampler flags and asked with no sampler fields: the model is named
    after the folder (``demo``) and each answer is the sampler's under the saved settings (7 positions, one token
    per step)."""
    loaded = load_checkpoint(str(short_demo_checkpoint), CheckpointArguments(device="cpu"))
    assert (loaded.generation_config.gen_length, loaded.generation_config.steps) == (7, None)
    app = create_app(loaded, ServeArguments())
    with served(app) as url, httpx.Client(trust_env=False, timeout=120) as http:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, http_client=http)
        server = SimpleNamespace(loaded=loaded)
        for prompt in ("sort 8213", "reverse abc", "add 12+34"):
            response = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": prompt}])
            text, count = expected(server, prompt)
            assert text and response.choices[0].message.content == text
            assert response.usage.completion_tokens == count <= 7
