"""The OpenAI API shapes ``dllm serve`` speaks: request bodies (pydantic), responses, stream chunks, errors.

Requests carry OpenAI's fields (``model``, ``messages`` / ``prompt``, ``max_tokens``, ``temperature``, ``top_p``,
``n``, ``stream``, ``stop``) plus the diffusion sampler's options as extra fields (``steps``, ``block_size``,
``threshold``, ``cache``, ``remasking``, ``cfg_scale``, ``top_k``; the ``extra_body`` of the ``openai``
client), built from :class:`~dllm.core.sampling.DiffusionGenerationConfig` (:data:`SAMPLER_FIELDS`). A field not
listed here is refused (400), so a misspelt sampler option is not silently ignored; types are strict
(``"stream": "yes"`` is refused). OpenAI fields that clients send by default (``presence_penalty``, ``logprobs``,
``logit_bias``, ``response_format``, ...: :data:`NEUTRAL_VALUES`) are accepted with the values that ask for
nothing; any other value is refused with a 400 naming the field. ``seed`` seeds the sampler's draws.
``max_tokens`` is the diffusion canvas (``gen_length``): the answer is at most that long.

A chat message's content is a string or a list of parts: ``{"type": "text", "text": ...}`` and, for a
vision-language checkpoint, ``{"type": "image_url", "image_url": {"url": ...}}`` (the server decides which URLs it
reads: :mod:`dllm.inference.server`).
"""

from __future__ import annotations

import time
import typing
import uuid
from dataclasses import fields
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.core.sampling.config import fields_of_kind

# OpenAI's names for sampler options that it has too; every other sampler option keeps its own name.
_OPENAI_NAMES = {"gen_length": "max_tokens"}
SAMPLER_FIELDS = {_OPENAI_NAMES.get(name, name): name for name in fields_of_kind("sampler")}
"""Request field -> DiffusionGenerationConfig field: every sampler option (not the token ids, not the display
switches), built from the dataclass."""
REQUEST_NAMES = {target: name for name, target in SAMPLER_FIELDS.items()}
"""DiffusionGenerationConfig field -> request field."""
# OpenAI fields that clients (LangChain, LiteLLM, Open WebUI) send by default, with the values that ask for nothing:
# accepted when they have them, refused with a 400 that says what is not supported otherwise.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logprobs": (None, False, 0),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"),
    "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""),
}
STRICT = ConfigDict(extra="forbid", strict=True)  # "stream": "yes" is not a boolean, 4.5 is not max_tokens


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # json_schema's schema: refused below, by its type

    type: str


def _sampler_fields() -> dict[str, Any]:
    """The request's sampler fields: each ``DiffusionGenerationConfig`` sampler option, optional, of its type."""
    hints = typing.get_type_hints(DiffusionGenerationConfig)
    specs: dict[str, Any] = {}
    for f in fields(DiffusionGenerationConfig):
        if f.name in REQUEST_NAMES:
            specs[REQUEST_NAMES[f.name]] = (hints[f.name] | None, Field(default=None, description=f.metadata["help"]))
    return specs


class _OpenAIFields(BaseModel):
    """Fields shared by chat and text completions, besides the sampler options."""

    model_config = STRICT

    model: str
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # meaningless without tools: any value asks for nothing

    def overrides(self) -> dict[str, Any]:
        """The sampler options the request sets, as ``DiffusionGenerationConfig`` keyword arguments."""
        return {target: getattr(self, name) for name, target in SAMPLER_FIELDS.items()
                if getattr(self, name) is not None}

    def unsupported(self) -> tuple[str, str] | None:
        """The first field set to a value this server cannot honour, and why; ``None`` when there is none."""
        for name, neutral in NEUTRAL_VALUES.items():
            value = getattr(self, name, None)
            if not any(value == v and type(value) is type(v) for v in neutral):
                return name, f"{name}={value!r} is not supported (a diffusion sampler has no such option); " \
                             f"leave it out or send {neutral[1]!r}"
        return None

    def stop_strings(self) -> list[str]:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


_Request = create_model("_Request", __base__=_OpenAIFields, **_sampler_fields())


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: str | None = None  # OpenAI's resolution hint; the processor decides the resolution here


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. "name"

    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: str | list[ContentPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content if isinstance(p, TextPart))

    def has_images(self) -> bool:
        """Whether the content holds an ``image_url`` part."""
        return not isinstance(self.content, str) and any(isinstance(p, ImagePart) for p in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    response_format: ResponseFormat | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """As :meth:`_OpenAIFields.unsupported`; a ``response_format`` other than text too."""
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", (f"response_format {self.response_format.type!r} is not supported; only "
                                       "'text' (structured output needs constrained decoding)")
        return super().unsupported()

    def overrides(self) -> dict[str, Any]:
        """As :meth:`_Request.overrides`; ``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        values = super().overrides()
        if self.max_completion_tokens is not None:
            values["gen_length"] = self.max_completion_tokens
        return values


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


def invalid_text(value: Any, where: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string in ``value`` (a request's ``model_dump()``) that is
    not valid Unicode (JSON's ``"\\ud800"`` is a lone surrogate, which no tokenizer takes), else ``None``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = invalid_text(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    """A response id (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """``created``: seconds since the epoch."""
    return int(time.time())


def chat_response(model: str, choices: list[tuple[str, str]], usage_: dict[str, int]) -> dict[str, Any]:
    """A ``chat.completion`` from ``(text, finish_reason)`` per choice."""
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason) in enumerate(choices)],
            "usage": usage_}


def text_response(model: str, choices: list[tuple[str, str]], usage_: dict[str, int]) -> dict[str, Any]:
    """A ``text_completion`` from ``(text, finish_reason)`` per choice."""
    return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                        for i, (text, reason) in enumerate(choices)],
            "usage": usage_}
