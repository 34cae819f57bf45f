"""The OpenAI API shapes ``dllm serve`` speaks: request bodies (pydantic), responses, stream chunks, errors.

Requests carry OpenAI's fields (``model``, ``messages`` / ``prompt``, ``max_tokens``, ``temperature``, ``top_p``,
``n``, ``stream``, ``stop``) plus the diffusion sampler's options as extra fields (``steps``, ``block_size``,
``threshold``, ``cache``, ``remasking``, ``cfg_scale``, ``top_k``; the ``extra_body`` of the ``openai``
client). A field not listed here is refused (400), so a misspelt sampler option is not silently ignored.
``max_tokens`` is the diffusion canvas (``gen_length``): the answer is at most that long.

A chat message's content is a string or a list of parts: ``{"type": "text", "text": ...}`` and, for a
vision-language checkpoint, ``{"type": "image_url", "image_url": {"url": ...}}`` (the server decides which URLs it
reads: :mod:`dllm.inference.server`).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from dllm.core.sampling.config import CacheMode, Remasking

# Request field -> DiffusionGenerationConfig field.
SAMPLER_FIELDS = {"max_tokens": "gen_length", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                  "steps": "steps", "block_size": "block_size", "threshold": "threshold", "cache": "cache",
                  "remasking": "remasking", "cfg_scale": "cfg_scale"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    steps: int | None = None
    block_size: int | None = None
    threshold: float | None = None
    cache: CacheMode | None = None
    remasking: Remasking | None = None
    cfg_scale: float | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The sampler options the request sets, as ``DiffusionGenerationConfig`` keyword arguments."""
        return {target: getattr(self, name) for name, target in SAMPLER_FIELDS.items()
                if getattr(self, name) is not None}

    def stop_strings(self) -> list[str]:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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
    model_config = ConfigDict(extra="ignore")  # e.g. "name"

    role: str
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
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def overrides(self) -> dict[str, Any]:
        """As :meth:`_Request.overrides`; ``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        values = super().overrides()
        if self.max_completion_tokens is not None:
            values["gen_length"] = self.max_completion_tokens
        return values


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(min_length=1)


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
