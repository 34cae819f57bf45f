"""``dllm serve``: an OpenAI-compatible HTTP server for a masked diffusion checkpoint (FastAPI + uvicorn).

    pip install -e '.[serve]'                                # in a clone
    dllm serve outputs/demo --port 8000                      # served as "demo" (the folder's name)
    dllm serve outputs/demo --served_model_name tiny --block_size 4 --steps 8 --max_tokens_limit 256

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Reverse: hello"}],
                                   max_tokens=16, extra_body={"steps": 8, "block_size": 4})

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.
Sampler settings start from the checkpoint's ``diffusion_generation_config.json``, then the command-line flags,
then the request's fields (see :mod:`dllm.inference.protocol`). Concurrent requests with equal settings are
answered by one sampler call (:mod:`dllm.inference.batching`). Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: unknown model 404, a malformed or invalid body 400 (a refused
sampler value names its request field), a body over ``--max_request_bytes`` 413. Prompts are tokenised in a worker
thread (the event loop keeps answering ``/health``), and a prompt whose characters alone cannot fit the model's
positions is refused before it is tokenised.

Images (a vision-language checkpoint such as Qwen3-VL): chat messages may hold OpenAI's content parts
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` next to text parts. The server reads
base64 ``data:`` URLs; a local file (a ``file://`` URL or a plain path) only inside the folder given by
``--allowed_local_media_path`` (none by default: any local path is refused); it never fetches anything, so an
``http(s)://`` URL is refused. Every refusal, and an image sent to a text checkpoint, is a 400 naming the part
(``messages[0].content[1].image_url.url: ...``). Requests with images are batched with each other.

Streaming (``stream: true``): a diffusion model does not produce tokens left to right; it finishes the answer a
block (``block_size``) at a time. The stream therefore sends one chunk per finished block, as soon as the sampler
finishes it (the sampler's ``on_block`` callback, handed from the model thread to the event loop by the
batcher), while the sampler call still runs; text that a stop string may still cut is held back until it cannot
(:class:`~dllm.inference.engine.TextStream`). An error after the stream began is sent as a last
``data: {"error": ...}`` event before ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.core.sampling.config import SamplerSettingError
from dllm.errors import UsageError
from dllm.inference.batching import Batcher
from dllm.inference.engine import (
    Completion,
    Engine,
    ContextLengthError,
    TextStream,
    VisionPrompt,
    check_fits,
    check_prompt_chars,
    cut_at_stop,
    encode_chats,
    encode_texts,
    longest_token_chars,
    model_positions,
)
from dllm.data.images import load_image
from dllm.inference.loading import (
    CheckpointArguments,
    LoadedCheckpoint,
    SamplerOptions,
    check_port,
    check_takes_images,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)
from dllm.inference.protocol import (
    REQUEST_NAMES,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    TextPart,
    chat_response,
    error_body,
    invalid_text,
    new_id,
    now,
    text_response,
    usage,
)


@dataclass
class ServeArguments:
    """Where to listen, the name to answer to, and the batching limits."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    served_model_name: str | None = field(default=None, metadata={
        "help": "The model name requests must use. Default: the checkpoint folder's name (or the hub id)."})
    max_tokens_limit: int = field(default=1024, metadata={"help": "Largest max_tokens (answer canvas) a request "
                                                                  "may ask for."})
    batch_window_ms: float = field(default=10.0, metadata={
        "help": "How long the first queued request waits for others to share its sampler call."})
    max_batch_size: int = field(default=64, metadata={"help": "Most prompts in one sampler call."})
    max_request_bytes: int = field(default=8 * 1024 * 1024, metadata={
        "help": "Largest request body in bytes (8 MiB: a few inline photos as data URLs); a larger one is refused "
                "with 413 before it is read whole."})
    allowed_local_media_path: str | None = field(default=None, metadata={
        "help": "A folder whose image files chat requests may name in image_url parts (file:// URLs or paths; "
                "relative paths are taken inside it). Default: none, images come inline as data: URLs. "
                "http(s) URLs are never fetched."})


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _config_error(err: SamplerSettingError) -> ApiError:
    """A 400 for a sampler setting the config refused, under the request's name for the field."""
    param = REQUEST_NAMES.get(err.field, err.field)
    return ApiError(400, f"{param} {err.message}", param)


def _length_error(err: ContextLengthError) -> ApiError:
    return ApiError(400, str(err).replace("gen_length", "max_tokens"), err.where.partition("[")[0],
                    "context_length_exceeded")


class Serving:
    """The served checkpoint: the checks and the answers behind both completion endpoints."""

    def __init__(self, engine: Engine, name: str, args: ServeArguments):
        self.engine, self.name, self.args = engine, name, args
        self.batcher = Batcher(engine, args.batch_window_ms / 1000, args.max_batch_size)
        self.positions = model_positions(engine.model.config)
        self.most_chars = longest_token_chars(engine.tokenizer)

    def config_for(self, request: ChatCompletionRequest | CompletionRequest) -> DiffusionGenerationConfig:
        """The checkpoint's settings with the request's overrides; refuses another model or a too long answer."""
        if request.model != self.name:
            raise ApiError(404, f"The model {request.model!r} does not exist; this server serves {self.name!r}",
                           "model", "model_not_found")
        refused = request.unsupported()
        if refused is not None:
            raise ApiError(400, refused[1], refused[0], "unsupported_parameter")
        where = invalid_text(request.model_dump())
        if where is not None:
            raise ApiError(400, f"{where}: not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text",
                           where.partition("[")[0].partition(".")[0])
        overrides = request.overrides()
        length = overrides.get("gen_length", self.engine.config.gen_length)
        if length > self.args.max_tokens_limit:
            raise ApiError(400, f"max_tokens ({length}) is above this server's limit "
                                f"({self.args.max_tokens_limit})", "max_tokens")
        try:
            return replace(self.engine.config, **overrides)
        except SamplerSettingError as err:
            raise _config_error(err) from err

    def check_chars(self, texts: list[str], param: str) -> None:
        """Refuse, before tokenising, a text whose characters cannot fit the model's positions."""
        try:
            for text in texts:
                check_prompt_chars(len(text), self.most_chars, self.positions, param)
        except ContextLengthError as err:
            raise _length_error(err) from err

    def check_prompts(self, prompts: list[list[int] | VisionPrompt], config: DiffusionGenerationConfig,
                      param: str) -> int:
        """The prompts' tokens in all; refuses empty prompts, and prompt plus answer beyond the model's positions
        (``max_position_embeddings``)."""
        lengths = [self.engine.prompt_length(p) for p in prompts]
        if any(length == 0 for length in lengths):
            raise ApiError(400, f"{param} is empty", param)
        try:
            check_fits(self.engine.model.config, max(lengths), config.gen_length, param)
        except ContextLengthError as err:
            raise _length_error(err) from err
        return sum(lengths)

    async def answer(self, request: ChatCompletionRequest | CompletionRequest, prompts: list[list[int] | VisionPrompt],
                     config: DiffusionGenerationConfig, chat: bool, prompt_tokens: int,
                     ) -> JSONResponse | StreamingResponse:
        """Run the prompts (``n`` choices each) through the batcher and shape OpenAI's response."""
        rows = [prompt for prompt in prompts for _ in range(request.n)]
        if request.stream:
            return StreamingResponse(self.stream(request, rows, config, chat, prompt_tokens),
                                     media_type="text/event-stream")
        completions = await self.batcher.submit(rows, config, seed=request.seed)
        choices = self.choices(request, completions)
        usage_ = usage(prompt_tokens, sum(len(c.ids) for c in completions))
        return JSONResponse((chat_response if chat else text_response)(self.name, choices, usage_))

    def choices(self, request: ChatCompletionRequest | CompletionRequest,
                completions: list[Completion]) -> list[tuple[str, str]]:
        """Each completion's text (cut at a stop string) and finish reason."""
        choices = []
        for completion in completions:
            text, stopped = cut_at_stop(self.engine.decode(completion.ids), request.stop_strings())
            choices.append((text, "stop" if stopped or completion.finished else "length"))
        return choices

    async def stream(self, request: ChatCompletionRequest | CompletionRequest, rows: list[list[int] | VisionPrompt],
                     config: DiffusionGenerationConfig, chat: bool, prompt_tokens: int) -> AsyncIterator[str]:
        """Server-sent events: (chat) a role chunk per choice, then each finished block's new text as the sampler
        finishes it, then each choice's rest and finish reason, the usage if asked, and ``[DONE]``."""
        chunk = _Chunks(chat, self.name)
        streams = [TextStream(self.engine.decode, request.stop_strings()) for _ in rows]
        blocks: asyncio.Queue[tuple[int, list[int]] | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.batcher.submit(
            rows, config, on_block=lambda row, _block, ids: blocks.put_nowait((row, ids)), seed=request.seed))
        task.add_done_callback(lambda _: blocks.put_nowait(None))  # after every block: they were scheduled first
        try:
            if chat:
                for index in range(len(rows)):
                    yield chunk.event(index, None, None, role=True)
            while (item := await blocks.get()) is not None:
                if piece := streams[item[0]].update(item[1]):
                    yield chunk.event(item[0], piece, None)
            completions = task.result()
            for index, (text, reason) in enumerate(self.choices(request, completions)):
                if piece := streams[index].finish(text):
                    yield chunk.event(index, piece, None)
                yield chunk.event(index, None, reason)
            if request.stream_options is not None and request.stream_options.include_usage:
                usage_ = usage(prompt_tokens, sum(len(c.ids) for c in completions))
                yield _event({**chunk.base, "choices": [], "usage": usage_})
        except Exception as err:  # noqa: BLE001 - not a fallback: the client gets the error as the last event
            yield _event(error_body(f"{type(err).__name__}: {err}", type="server_error"))
        finally:
            task.cancel()  # a client that went away: its jobs are dropped if their batch has not run yet
        yield "data: [DONE]\n\n"


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


class _Chunks:
    """The chunks of one streamed response (same id and time), as server-sent events."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.base = {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion.chunk" if chat
                     else "text_completion", "created": now(), "model": model}

    def event(self, index: int, text: str | None, reason: str | None, role: bool = False) -> str:
        """One choice's chunk: its role (chat), a piece of text, or its finish reason."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        return _event({**self.base, "choices": [choice]})


def _content(serving: Serving, message: ChatMessage, index: int) -> str | list[dict[str, Any]]:
    """A message's content for the processor: text, or parts with the images decoded (see the module docstring)."""
    if not message.has_images():
        return message.text()
    parts = []
    for number, part in enumerate(message.content):
        where = f"messages[{index}].content[{number}]"
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
            continue
        try:
            check_takes_images(serving.name, serving.engine.model.config.model_type, f"{where} (an image)")
            image = load_image(part.image_url.url, f"{where}.image_url.url",
                               serving.args.allowed_local_media_path or False)
        except UsageError as err:
            raise ApiError(400, str(err), "messages") from err
        parts.append({"type": "image", "image": image})
    return parts


_ROLES = {"developer": "system"}  # OpenAI's newer name; chat templates know "system"


def _encode_chat(serving: Serving, request: ChatCompletionRequest) -> list[list[int] | VisionPrompt]:
    from jinja2 import TemplateError

    if any(m.has_images() for m in request.messages):
        return [VisionPrompt([{"role": _ROLES.get(m.role, m.role), "content": _content(serving, m, i)}
                              for i, m in enumerate(request.messages)])]
    conversation = [{"role": _ROLES.get(m.role, m.role), "content": m.text()} for m in request.messages]
    try:
        return encode_chats(serving.engine.tokenizer, [conversation])
    except (ValueError, TemplateError) as err:  # no chat template, or the template refuses the conversation
        raise ApiError(400, f"messages: {err}", "messages") from err


def _prepare_chat(serving: Serving, request: ChatCompletionRequest, config: DiffusionGenerationConfig,
                  ) -> tuple[list[list[int] | VisionPrompt], int]:
    prompts = _encode_chat(serving, request)
    return prompts, serving.check_prompts(prompts, config, "messages")


def _prepare_texts(serving: Serving, texts: list[str], config: DiffusionGenerationConfig,
                   ) -> tuple[list[list[int]], int]:
    prompts = encode_texts(serving.engine.tokenizer, texts)
    return prompts, serving.check_prompts(prompts, config, "prompt")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 in OpenAI's error shape, from its
    ``Content-Length`` before anything is read, or once the bytes streamed in (chunked) pass the limit."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit
        self.message = (f"the request body is larger than this server's limit of {limit} bytes "
                        "(dllm serve --max_request_bytes)")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse(error_body(self.message), status_code=413)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # raised into the body read: the app's error handler answers it
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.message, param=err.param, code=err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"malformed JSON body: {first.get('msg')}"), status_code=400)
        param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        return JSONResponse(error_body(f"{param}: {first.get('msg')}", param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(err.detail), type=kind), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"{type(err).__name__}: {err}", type="server_error"), status_code=500)


def create_app(loaded: LoadedCheckpoint, args: ServeArguments | None = None) -> FastAPI:
    """The FastAPI app serving ``loaded``; ``app.state.serving`` holds the :class:`Serving` (and its engine)."""
    args = args or ServeArguments()
    processor = loaded.image_processor() if loaded.takes_images else None  # a missing one fails at start-up
    serving = Serving(Engine(loaded.model, loaded.tokenizer, loaded.generation_config, processor),
                      args.served_model_name or loaded.default_name, args)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await serving.batcher.start()
        yield
        await serving.batcher.stop()

    app = FastAPI(title="dllm serve", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=args.max_request_bytes)
    app.state.serving = serving
    _error_handlers(app)
    model_card = {"id": serving.name, "object": "model", "created": now(), "owned_by": "dllm"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        if model != serving.name:
            raise ApiError(404, f"The model {model!r} does not exist", "model", "model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        config = serving.config_for(request)
        serving.check_chars([m.text() for m in request.messages], "messages")
        # tokenising (and decoding images) takes a thread: the event loop keeps answering meanwhile
        prompts, prompt_tokens = await asyncio.to_thread(_prepare_chat, serving, request, config)
        return await serving.answer(request, prompts, config, True, prompt_tokens)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> Any:
        config = serving.config_for(request)
        texts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        serving.check_chars(texts, "prompt")
        prompts, prompt_tokens = await asyncio.to_thread(_prepare_texts, serving, texts, config)
        return await serving.answer(request, prompts, config, False, prompt_tokens)

    return app


def _check_serve_arguments(args: ServeArguments) -> None:
    check_port(args.port)
    if args.max_tokens_limit < 1 or args.max_batch_size < 1 or args.batch_window_ms < 0:
        raise UsageError(f"--max_tokens_limit and --max_batch_size must be at least 1 and --batch_window_ms at "
                         f"least 0, got {args.max_tokens_limit}, {args.max_batch_size}, {args.batch_window_ms}")
    if args.max_request_bytes < 1:
        raise UsageError(f"--max_request_bytes must be at least 1, got {args.max_request_bytes}")
    folder = args.allowed_local_media_path
    if folder is not None and not Path(folder).is_dir():
        raise UsageError(f"--allowed_local_media_path {folder}: no such folder")


def main(argv: list[str] | None = None) -> None:
    """Run ``dllm serve`` with command-line ``argv`` until interrupted.

    Raises:
        UsageError: a checkpoint that cannot be served, a bad option, a default answer above the limit.
    """
    import uvicorn

    checkpoint, _, (args, load_args, options) = parse_verb_args(
        "dllm serve", sys.argv[1:] if argv is None else argv, (ServeArguments, CheckpointArguments, SamplerOptions))
    _check_serve_arguments(args)
    loaded = load_checkpoint(checkpoint, load_args, **sampler_overrides(options))
    if loaded.generation_config.gen_length > args.max_tokens_limit:
        raise UsageError(f"{checkpoint}: the default answer length gen_length={loaded.generation_config.gen_length} "
                         f"is above --max_tokens_limit {args.max_tokens_limit}")
    uvicorn.run(create_app(loaded, args), host=args.host, port=args.port, log_level="info")
