"""``dllm serve`` and what clients send: the neutral OpenAI fields LangChain, LiteLLM and Open WebUI add are accepted
(``seed`` used), other values refused with a 400 naming the field; strict types and roles; invalid Unicode; every
sampler value the config refuses is a 400 naming the request's field; a body over the limit is a 413; a prompt too
long for the model is refused before it is tokenised, and tokenising never holds up the event loop."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from dllm.core.sampling import answer_ids, encode_prompt, generate  # noqa: E402
from dllm.inference.loading import CheckpointArguments, load_checkpoint  # noqa: E402
from dllm.inference.server import ServeArguments, create_app  # noqa: E402
from tests.helpers import served  # noqa: E402

MODEL = "tiny-dllm"


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    app = create_app(loaded, ServeArguments(max_tokens_limit=16, batch_window_ms=20, max_request_bytes=200_000))
    with served(app) as url, httpx.Client(base_url=url, trust_env=False, timeout=120) as http:
        yield SimpleNamespace(http=http, loaded=loaded, serving=app.state.serving)


def post(server, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], **fields}
    return server.http.post("/v1/chat/completions", json=body)


def answer(server, prompt: str, seed: int | None = None, **overrides) -> str:
    """The sampler's own answer to this user prompt alone (with a generator seeded ``seed``)."""
    loaded = server.loaded
    config = replace(loaded.generation_config, **overrides)
    ids = encode_prompt(loaded.tokenizer, prompt)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = generate(loaded.model, torch.tensor([ids]), config, generator=generator)
    return loaded.tokenizer.decode(answer_ids(out.sequences, len(ids), config.eos_token_id)[0],
                                   skip_special_tokens=True)


def test_neutral_openai_fields_are_accepted(server):
    response = post(server, presence_penalty=0, frequency_penalty=0.0, logprobs=False, top_logprobs=0, logit_bias={},
                    response_format={"type": "text"}, parallel_tool_calls=True, tools=[], tool_choice="none",
                    user="u", temperature=0)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == answer(server, "hello")
    text = server.http.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "logprobs": 0, "echo": False,
                                                      "best_of": 1, "presence_penalty": 0})
    assert text.status_code == 200, text.text


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty=0.5 is not supported (a diffusion sampler has no "
                                                    "such option); leave it out or send 0"),
    ({"logprobs": True}, "logprobs", "logprobs=True is not supported (a diffusion sampler has no such option); leave "
                                     "it out or send False"),
    ({"logit_bias": {"5": 10}}, "logit_bias", "logit_bias={'5': 10.0} is not supported (a diffusion sampler has no "
                                              "such option); leave it out or send {}"),
    ({"response_format": {"type": "json_object"}}, "response_format",
     "response_format 'json_object' is not supported; only 'text' (structured output needs constrained decoding)"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", None),
])
def test_other_values_of_those_fields_are_refused_naming_them(server, fields, param, message):
    response = post(server, **fields)
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["code"]) == (400, param, "unsupported_parameter")
    assert message is None or error["message"] == message


@pytest.mark.parametrize(("fields", "param"), [
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": 4.5}, "max_tokens"),
    ({"steps": "4"}, "steps"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
])
def test_types_and_roles_are_strict(server, fields, param):
    response = post(server, **fields)
    assert (response.status_code, response.json()["error"]["param"]) == (400, param), response.text


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"max_tokens": 8, "steps": 2, "block_size": 2}, "steps",
     "steps must be at least the number of blocks, 4 (gen_length 8 in blocks of 2), got 2"),
    ({"threshold": 5}, "threshold", "threshold must be None or in (0, 1], got 5.0"),
    ({"temperature": 1e9}, "temperature", "temperature must be in [0, 2.0], got 1000000000.0"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1, got 0"),
])
def test_sampler_values_the_config_refuses_are_a_400_naming_the_request_field(server, fields, param, message):
    response = post(server, **fields)
    assert (response.status_code, response.json()["error"]["param"], response.json()["error"]["message"]) == (
        400, param, message)


def test_developer_role_is_a_system_turn(server):
    as_developer = post(server, messages=[{"role": "developer", "content": "be brief"},
                                          {"role": "user", "content": "hi"}])
    as_system = post(server, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert as_developer.status_code == 200
    assert as_developer.json()["choices"] == as_system.json()["choices"]


def test_a_lone_surrogate_is_a_400_and_the_server_stays_up(server):
    raw = b'{"model": "tiny-dllm", "messages": [{"role": "user", "content": "bad \\ud800 text"}]}'
    response = server.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == ("messages[0].content: not valid Unicode (a lone surrogate such as "
                                                   "\\ud800); send UTF-8 text")
    raw = b'{"model": "tiny-dllm", "prompt": ["ok", "\\udfff"]}'
    response = server.http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "prompt")
    assert post(server).status_code == 200


def test_a_seed_gives_the_seeded_samplers_answer_whatever_else_is_queued(server):
    settings = {"temperature": 1.0, "max_tokens": 8}
    expected = answer(server, "hello", seed=7, temperature=1.0)
    assert expected != answer(server, "hello", seed=8, temperature=1.0)  # premise: the seed matters
    results: list = []
    others = [threading.Thread(target=lambda: results.append(post(server, **settings))) for _ in range(3)]
    for thread in others:
        thread.start()
    seeded = post(server, seed=7, **settings)
    for thread in others:
        thread.join()
    assert seeded.json()["choices"][0]["message"]["content"] == expected
    assert post(server, seed=7, **settings).json()["choices"] == seeded.json()["choices"]


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(server):
    big = post(server, messages=[{"role": "user", "content": "x" * 300_000}])
    assert big.status_code == 413
    assert big.json()["error"]["message"] == ("the request body is larger than this server's limit of 200000 bytes "
                                              "(dllm serve --max_request_bytes)")

    def chunks():
        yield b'{"model": "tiny-dllm", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    streamed = server.http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "limit of 200000 bytes" in streamed.json()["error"]["message"]
    assert server.http.get("/health").status_code == 200


def test_a_prompt_too_long_for_the_model_is_refused_before_tokenising(server, monkeypatch):
    calls = []
    tokenizer = server.serving.engine.tokenizer
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: calls.append(1))
    response = post(server, messages=[{"role": "user", "content": "x" * 150_000}])
    assert (response.status_code, response.json()["error"]["code"]) == (400, "context_length_exceeded")
    assert response.json()["error"]["message"] == (
        "messages: at least 5769 tokens (judged by its characters) exceed the model's 256 positions "
        "(max_position_embeddings)")
    assert calls == []
    monkeypatch.undo()
    response = post(server, messages=[{"role": "user", "content": "x" * 300}])  # tokenised, then refused
    assert response.json()["error"]["message"] == ("messages: 303 tokens plus max_tokens 8 exceed the model's 256 "
                                                   "positions (max_position_embeddings)")


def test_tokenising_runs_off_the_event_loop(server, monkeypatch):
    tokenizer = server.serving.engine.tokenizer
    real = tokenizer.apply_chat_template

    def slow(*args, **kwargs):
        time.sleep(3)  # a slow tokenisation: the event loop must go on answering meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", slow)
    request = threading.Thread(target=post, args=(server,))
    request.start()
    time.sleep(0.5)
    began = time.perf_counter()
    assert server.http.get("/health").status_code == 200
    waited = time.perf_counter() - began
    request.join()
    assert waited < 1.5, waited


def test_a_requests_settings_are_checked_once(server, monkeypatch):
    """The config checks itself when the request's settings are applied; running the batch does not again."""
    from dllm.core.sampling import DiffusionGenerationConfig

    calls, real = [], DiffusionGenerationConfig.validate
    monkeypatch.setattr(DiffusionGenerationConfig, "validate", lambda self: calls.append(1) or real(self))
    assert post(server, steps=4).status_code == 200
    assert len(calls) == 1
