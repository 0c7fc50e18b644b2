"""OpenAI-compatible request models, validation and response/chunk builders.

The HTTP server (:mod:`charbench.engine.server`) parses every request body with
:func:`parse_request`, which returns a validated pydantic model or raises
:class:`OpenAIError` (rendered as an OpenAI-style error body)::

    req = parse_request(CompletionRequest, body_bytes)
    params = req.sampling_params(default_max_tokens=16)

Responses are built as plain dicts (non-streaming) or as pre-rendered SSE strings
(streaming, see :class:`ChunkWriter`) because a chunk is produced per token and must be
cheap: the JSON envelope of a stream is rendered once and only the text is escaped per
token.

Accepted fields (others are ignored, as OpenAI-compatible servers commonly do):
``model``, ``prompt`` (string, token-id list, or a one-element list of either),
``messages`` (chat), ``max_tokens``, ``max_completion_tokens`` (chat; wins over
``max_tokens``), ``temperature`` (default 1.0 as in OpenAI), ``top_p``, ``top_k``
(vLLM extension; -1 or 0 disables), ``seed``, ``stop`` (string or list),
``stop_token_ids``, ``stream``, ``stream_options.include_usage``, ``ignore_eos`` and
``min_tokens`` (vLLM extensions), ``n`` (only 1). Fields that would change the output in
ways the engine cannot honour (``logprobs``, ``echo``, ``best_of`` > 1, non-zero penalties,
``logit_bias``) are refused with 400 rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charbench.engine.api import RequestOutput, SamplingParams

# --------------------------------------------------------------------------- errors


class OpenAIError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {...}}``.

    Attributes:
        status_code: HTTP status (400, 404, 429, 503, ...).
        message: human-readable message naming the field and the fix.
        type: OpenAI error type (``invalid_request_error``, ...).
        param: the request field at fault, or None.
        code: a short machine-readable code, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients expect."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --------------------------------------------------------------------------- requests

_STRICT = ConfigDict(strict=True, extra="ignore")


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a final chunk with usage and no choices."""

    model_config = _STRICT
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = _STRICT

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    n: int | None = None
    best_of: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def _check_unsupported(self) -> None:
        if self.n is not None and self.n != 1:
            raise OpenAIError("n: only n=1 is supported; send one request per sample", param="n")
        if self.best_of is not None and self.best_of != 1:
            raise OpenAIError("best_of: only best_of=1 is supported", param="best_of")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                raise OpenAIError(f"{name}: penalties are not supported; omit it or send 0", param=name)
        if self.logit_bias:
            raise OpenAIError("logit_bias: not supported; omit it", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise OpenAIError("stream_options: only allowed when stream is true", param="stream_options")

    def include_usage(self) -> bool:
        """Whether a streaming response ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        """Translate to engine :class:`SamplingParams`; raise OpenAIError on bad values.

        Args:
            default_max_tokens: used when the request gives no output limit.
        """
        stop: list[str]
        if self.stop is None:
            stop = []
        elif isinstance(self.stop, str):
            stop = [self.stop] if self.stop else []
        else:
            stop = [s for s in self.stop if s]
        if len(stop) > 16:
            raise OpenAIError("stop: at most 16 stop strings", param="stop")
        max_tokens = self._requested_max_tokens()
        params = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else max(default_max_tokens, 1),
            min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else float(self.temperature),
            top_k=0 if self.top_k is None or self.top_k < 0 else self.top_k,
            top_p=1.0 if self.top_p is None else float(self.top_p),
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
        )
        if params.min_tokens > params.max_tokens:
            raise OpenAIError(
                f"min_tokens: {params.min_tokens} exceeds max_tokens {params.max_tokens}; "
                "lower min_tokens or raise max_tokens",
                param="min_tokens",
            )
        try:
            params.validate()
        except ValueError as exc:
            param = str(exc).split(" ", 1)[0]
            raise OpenAIError(str(exc), param=param) from exc
        return params


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions`` body."""

    prompt: Any = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def check(self) -> None:
        """Refuse unsupported options (raises OpenAIError)."""
        self._check_unsupported()
        if self.echo:
            raise OpenAIError("echo: not supported; omit it or send false", param="echo")
        if self.logprobs is not None:
            raise OpenAIError("logprobs: not supported; omit it", param="logprobs")
        if self.suffix:
            raise OpenAIError("suffix: not supported; omit it", param="suffix")

    def normalized_prompt(self, vocab_size: int | None) -> str | list[int]:
        """The single prompt as text or token ids.

        Accepts a string, a list of token ids, or a one-element list holding either
        (OpenAI's batch form with one entry).

        Args:
            vocab_size: token ids must be below it (None skips the check).
        """
        p = self.prompt
        if p is None:
            raise OpenAIError("prompt: required (a string or a list of token ids)", param="prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            return p
        if isinstance(p, list):
            if not p:
                raise OpenAIError("prompt: empty token list; send at least one token id", param="prompt")
            if all(isinstance(t, str) for t in p) or all(isinstance(t, list) for t in p):
                raise OpenAIError(
                    f"prompt: got {len(p)} prompts; this server takes one prompt per request",
                    param="prompt",
                )
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                raise OpenAIError("prompt: a token-id list must hold integers only", param="prompt")
            bad = [t for t in p if t < 0 or (vocab_size is not None and t >= vocab_size)]
            if bad:
                raise OpenAIError(
                    f"prompt: token id {bad[0]} out of range [0, {vocab_size})", param="prompt"
                )
            return list(p)
        raise OpenAIError(
            "prompt: must be a string or a list of token ids", param="prompt"
        )


class ChatMessage(BaseModel):
    """One chat message; ``content`` is a string or a list of ``{"type": "text"}`` parts."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The message content as plain text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts: list[str] = []
        for j, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(
                    f"messages[{index}].content[{j}]: only text parts are supported",
                    param=f"messages.{index}.content.{j}",
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None

    def check(self) -> None:
        """Refuse unsupported options (raises OpenAIError)."""
        self._check_unsupported()
        if not self.messages:
            raise OpenAIError("messages: must hold at least one message", param="messages")
        if self.logprobs:
            raise OpenAIError("logprobs: not supported; omit it", param="logprobs")
        if self.tools:
            raise OpenAIError("tools: tool calling is not supported", param="tools")

    def _requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(model: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body into ``model``; raise :class:`OpenAIError` (400) otherwise.

    Args:
        model: CompletionRequest or ChatCompletionRequest.
        body: the raw request body.
    """
    try:
        req = model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise OpenAIError(f"Invalid JSON body: {err['msg']}", code="invalid_json") from None
        loc = ".".join(str(x) for x in err["loc"])
        if not loc:
            raise OpenAIError(f"Request body: {err['msg']}") from None
        value = err.get("input")
        shown = json.dumps(value)[:80] if err["type"] != "missing" else None
        msg = f"{loc}: {err['msg']}" + (f" (got {shown})" if shown is not None else "")
        raise OpenAIError(msg, param=loc) from None
    req.check()
    return req


# --------------------------------------------------------------------------- chat template

DEFAULT_CHAT_TEMPLATE_DOC = """\
Default chat template (byte-tokenizer presets and checkpoints without a template):
each message becomes "<|ROLE|>\\nCONTENT\\n" in order, then "<|assistant|>\\n" is appended
so the model continues as the assistant. The BOS token is added by the tokenizer."""


def render_chat(messages: list[ChatMessage], chat_template: str | None = None) -> str:
    """Render chat messages to one prompt string.

    Uses the checkpoint's Jinja chat template when ``chat_template`` is given (rendered
    in a sandbox with ``messages`` and ``add_generation_prompt=True``); otherwise the
    default template described in :data:`DEFAULT_CHAT_TEMPLATE_DOC`.

    Args:
        messages: validated chat messages.
        chat_template: a Hugging Face style Jinja template string, or None.
    """
    plain = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(messages)]
    if chat_template:
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # lazy: only for checkpoints

        def _raise(msg: str) -> None:
            raise OpenAIError(f"messages: chat template refused the conversation: {msg}", param="messages")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(chat_template).render(
            messages=plain, add_generation_prompt=True, bos_token="", eos_token=""
        )
    out = [f"<|{m['role']}|>\n{m['content']}\n" for m in plain]
    out.append("<|assistant|>\n")
    return "".join(out)


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id, e.g. ``cmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    request_id: str, model: str, created: int, final: RequestOutput, prompt_tokens: int
) -> dict[str, Any]:
    """Non-streaming ``text_completion`` body from the request's last output."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": final.text, "logprobs": None, "finish_reason": final.finish_reason}
        ],
        "usage": usage_dict(prompt_tokens, len(final.token_ids)),
    }


def chat_response(
    request_id: str, model: str, created: int, final: RequestOutput, prompt_tokens: int
) -> dict[str, Any]:
    """Non-streaming ``chat.completion`` body from the request's last output."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": final.text},
                "logprobs": None,
                "finish_reason": final.finish_reason,
            }
        ],
        "usage": usage_dict(prompt_tokens, len(final.token_ids)),
    }


class ChunkWriter:
    """Renders the SSE events of one streaming response.

    The JSON envelope (id, object, created, model) is rendered once; per token only the
    text is escaped, so a chunk costs one ``json.dumps`` of a short string.

    Args:
        kind: ``completion`` or ``chat``.
        request_id: the response id (``cmpl-...`` / ``chatcmpl-...``).
        model: served model name.
        include_usage: add ``"usage": null`` to chunks and a final usage chunk.
    """

    def __init__(self, kind: Literal["completion", "chat"], request_id: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.include_usage = include_usage
        obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
        self.created = int(time.time())
        self._head = (
            '{"id":' + json.dumps(request_id) + ',"object":"' + obj + '","created":'
            + str(self.created) + ',"model":' + json.dumps(model) + ',"choices":'
        )
        self._usage_tail = ',"usage":null}' if include_usage else "}"
        if kind == "completion":
            self._pre = '[{"index":0,"text":'
            self._mid = ',"logprobs":null,"finish_reason":'
        else:
            self._pre = '[{"index":0,"delta":{"content":'
            self._mid = '},"logprobs":null,"finish_reason":'

    def role_chunk(self) -> str:
        """Chat streams open with a delta carrying the assistant role."""
        return (
            "data: " + self._head + '[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]' + self._usage_tail + "\n\n"
        )

    def text_chunk(self, text: str, finish_reason: str | None) -> str:
        """One SSE event with a text delta (and the finish reason on the last one)."""
        fr = "null" if finish_reason is None else '"' + finish_reason + '"'
        return (
            "data: " + self._head + self._pre + json.dumps(text, ensure_ascii=False)
            + self._mid + fr + "}]" + self._usage_tail + "\n\n"
        )

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The final ``stream_options.include_usage`` chunk: empty choices, usage set."""
        return (
            "data: " + self._head + "[]"
            + ',"usage":' + json.dumps(usage_dict(prompt_tokens, completion_tokens)) + "}\n\n"
        )

    @staticmethod
    def error_event(err: OpenAIError) -> str:
        """An error reported inside an already-started stream."""
        return "data: " + json.dumps(err.body()) + "\n\n"

    DONE = "data: [DONE]\n\n"
