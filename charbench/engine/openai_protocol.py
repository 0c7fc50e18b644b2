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

Accepted fields: ``model``, ``prompt`` (string, token-id list, or a one-element list of
either), ``messages`` (chat), ``max_tokens``, ``max_completion_tokens`` (chat; wins over
``max_tokens``), ``temperature`` (default 1.0 as in OpenAI), ``top_p``,
``presence_penalty`` and ``frequency_penalty`` (in [-2, 2]), ``seed`` (64-bit signed),
``stop`` (string or list), ``stream``, ``stream_options.include_usage``, ``user``, and
vLLM's extensions ``top_k`` (-1 or 0 disables; above the vocabulary acts as the
vocabulary), ``min_p`` (in [0, 1]), ``repetition_penalty`` (> 0), ``stop_token_ids``
(inside the vocabulary), ``ignore_eos`` and ``min_tokens``. Each numeric value is checked
against its real range (:meth:`SamplingParams.validate`) and refused with a 400 naming
it. Every other OpenAI or vLLM option (:data:`UNSUPPORTED_OPTIONS`: ``n`` > 1,
``logprobs``, ``response_format`` other than text, ``tools``, ``tool_choice`` other
than ``"none"``, ``parallel_tool_calls``, ``top_logprobs``, guided decoding, ...) is
refused with 400 unless absent or set to its "off" value, rather than silently ignored;
fields unknown to both APIs are ignored and logged, as vLLM does.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from charbench.engine.api import RequestOutput, SamplingParams, SamplingParamsError

logger = logging.getLogger("charbench.server")

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
# request bodies keep unknown fields so that options the engine cannot honour are refused
_REQUEST = ConfigDict(strict=True, extra="allow")


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a final chunk with usage and no choices."""

    model_config = _STRICT
    include_usage: bool = False
    continuous_usage_stats: bool = False


@dataclass(frozen=True)
class _Unsupported:
    """An OpenAI/vLLM option this server does not implement.

    Attributes:
        off: values that leave the output unchanged (besides null), accepted.
        hint: how to fix the request; default "omit it" (or send the first ``off`` value).
    """

    off: tuple[Any, ...] = ()
    hint: str | None = None

    def message(self, name: str) -> str:
        """The 400 message for a request that sets ``name``."""
        fix = self.hint or "not supported; omit it" + (
            f" or send {json.dumps(self.off[0])}" if self.off else ""
        )
        return f"{name}: {fix}"

    def allows(self, value: Any) -> bool:
        """True for null and the ``off`` values (same JSON type: ``true`` is not ``1``)."""
        return value is None or any(type(value) is type(v) and value == v for v in self.off)


_STRUCTURED = "structured output is not supported; omit it"
# Every option of the OpenAI API and of vLLM's extensions that the engine does not
# implement: refused with 400 unless absent or "off", never silently ignored. Unknown
# fields outside this table are ignored (as vLLM does) and logged.
UNSUPPORTED_OPTIONS: dict[str, _Unsupported] = {
    "n": _Unsupported((1,), "only n=1 is supported; send one request per sample"),
    "best_of": _Unsupported((1,), "only best_of=1 is supported"),
    "use_beam_search": _Unsupported((False,), "beam search is not supported; omit it"),
    "length_penalty": _Unsupported((1, 1.0), "only used by beam search, which is not supported; omit it"),
    "logit_bias": _Unsupported(({},)),
    "allowed_token_ids": _Unsupported(),
    "bad_words": _Unsupported(([],)),
    "logprobs": _Unsupported((False,)),
    "top_logprobs": _Unsupported((0,)),
    "prompt_logprobs": _Unsupported(),
    "echo": _Unsupported((False,)),
    "suffix": _Unsupported(("",)),
    "tools": _Unsupported(([],), "tool calling is not supported; omit it"),
    "tool_choice": _Unsupported(("none",), 'tool calling is not supported; omit it or send "none"'),
    "parallel_tool_calls": _Unsupported((), "tool calling is not supported; omit it"),
    "functions": _Unsupported(([],), "function calling is not supported; omit it"),
    "function_call": _Unsupported(("none",), 'function calling is not supported; omit it or send "none"'),
    "response_format": _Unsupported(({"type": "text"},), _STRUCTURED + ' or send {"type": "text"}'),
    "structured_outputs": _Unsupported((), _STRUCTURED),
    "guided_json": _Unsupported((), _STRUCTURED),
    "guided_regex": _Unsupported((), _STRUCTURED),
    "guided_choice": _Unsupported((), _STRUCTURED),
    "guided_grammar": _Unsupported((), _STRUCTURED),
    "guided_decoding_backend": _Unsupported((), _STRUCTURED),
    "guided_whitespace_pattern": _Unsupported((), _STRUCTURED),
    "logits_processors": _Unsupported(),
    "include_stop_str_in_output": _Unsupported((False,)),
    "skip_special_tokens": _Unsupported((True,), "special tokens are always skipped; omit it or send true"),
    "spaces_between_special_tokens": _Unsupported((True,)),
    "truncate_prompt_tokens": _Unsupported(),
    "return_tokens_as_token_ids": _Unsupported((False,)),
    "priority": _Unsupported((0,), "requests are served first come, first served; omit it or send 0"),
    "continue_final_message": _Unsupported((False,)),
    "add_generation_prompt": _Unsupported((True,)),
    "chat_template": _Unsupported((), "the server uses the checkpoint's chat template; omit it"),
    "chat_template_kwargs": _Unsupported(({},)),
    "documents": _Unsupported(),
    "mm_processor_kwargs": _Unsupported(),
    "audio": _Unsupported(),
    "modalities": _Unsupported((["text"],)),
    "prediction": _Unsupported(),
    "reasoning_effort": _Unsupported(),
    "web_search_options": _Unsupported(),
    "store": _Unsupported((False,)),
    "service_tier": _Unsupported(("auto", "default")),
    "request_id": _Unsupported((), "the server assigns ids (see the X-Request-Id header); omit it"),
    "cache_salt": _Unsupported(),
    "kv_transfer_params": _Unsupported(),
    "vllm_xargs": _Unsupported(),
}

# Informational fields that do not change the output: accepted and ignored.
HARMLESS_OPTIONS = frozenset({"user", "metadata"})


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions.

    Ranges are not declared here: :meth:`SamplingParams.validate` is the one place that
    knows them, and its errors name the field (answered as 400 with ``param`` set).
    """

    model_config = _REQUEST

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    user: str | None = None

    # add_special_tokens is "off" at its vLLM default, which differs per endpoint
    ADD_SPECIAL_TOKENS_DEFAULT: ClassVar[bool]

    def _check_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name, value in extra.items():
            opt = UNSUPPORTED_OPTIONS.get(name)
            if opt is not None and not opt.allows(value):
                raise OpenAIError(opt.message(name), param=name)
        special = extra.get("add_special_tokens")
        if special is not None and special is not self.ADD_SPECIAL_TOKENS_DEFAULT:
            default = json.dumps(self.ADD_SPECIAL_TOKENS_DEFAULT)
            raise OpenAIError(
                f"add_special_tokens: not supported; omit it or send {default}",
                param="add_special_tokens",
            )
        unknown = sorted(set(extra) - set(UNSUPPORTED_OPTIONS) - HARMLESS_OPTIONS - {"add_special_tokens"})
        if unknown:
            logger.warning("request fields ignored (unknown to this server): %s", ", ".join(unknown))
        if self.stream_options is not None and not self.stream:
            raise OpenAIError("stream_options: only allowed when stream is true", param="stream_options")
        if self.stream_options is not None and self.stream_options.continuous_usage_stats:
            raise OpenAIError(
                "stream_options.continuous_usage_stats: not supported; omit it or send false",
                param="stream_options.continuous_usage_stats",
            )

    def include_usage(self) -> bool:
        """Whether a streaming response ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _requested_max_tokens(self) -> tuple[int | None, str]:
        """The output limit the request gave (None if none) and the field that gave it."""
        return self.max_tokens, "max_tokens"

    def sampling_params(self, default_max_tokens: int, vocab_size: int | None = None) -> SamplingParams:
        """Translate to engine :class:`SamplingParams`; raise OpenAIError on bad values.

        Args:
            default_max_tokens: used when the request gives no output limit.
            vocab_size: the model's vocabulary (``stop_token_ids`` must be below it).
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
        max_tokens, max_field = self._requested_max_tokens()

        def given(value: float | None, default: float) -> float:
            return default if value is None else value

        params = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else max(default_max_tokens, 1),
            min_tokens=self.min_tokens,
            temperature=given(self.temperature, 1.0),  # OpenAI's default
            top_k=0 if self.top_k is None else self.top_k,
            top_p=given(self.top_p, 1.0),
            min_p=given(self.min_p, 0.0),
            repetition_penalty=given(self.repetition_penalty, 1.0),
            presence_penalty=given(self.presence_penalty, 0.0),
            frequency_penalty=given(self.frequency_penalty, 0.0),
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
        )
        try:
            params.validate(vocab_size)
        except SamplingParamsError as exc:
            # the engine names the limit max_tokens; the request may have called it otherwise
            param = max_field if exc.param == "max_tokens" else exc.param
            message = str(exc) if param == exc.param else f"{param}{str(exc)[len(exc.param):]}"
            raise OpenAIError(message, param=param) from None
        return params


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions`` body."""

    prompt: Any = None
    ADD_SPECIAL_TOKENS_DEFAULT: ClassVar[bool] = True

    def check(self) -> None:
        """Refuse unsupported options (raises OpenAIError)."""
        self._check_unsupported()

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
    max_completion_tokens: int | None = None
    ADD_SPECIAL_TOKENS_DEFAULT: ClassVar[bool] = False

    def check(self) -> None:
        """Refuse unsupported options (raises OpenAIError)."""
        self._check_unsupported()
        if not self.messages:
            raise OpenAIError("messages: must hold at least one message", param="messages")

    def _requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


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


def render_chat(
    messages: list[ChatMessage], chat_template: str | None = None, special_tokens: dict[str, str] | None = None
) -> str:
    """Render chat messages to one prompt string.

    Uses the checkpoint's Jinja chat template when ``chat_template`` is given (rendered
    in a sandbox with ``messages``, ``add_generation_prompt=True`` and the special-token
    strings, as transformers renders it; a message's ``name`` is passed on); otherwise the
    default template described in :data:`DEFAULT_CHAT_TEMPLATE_DOC`, which has no place for
    names, so a named message is refused rather than rendered without its name.

    Args:
        messages: validated chat messages.
        chat_template: a Hugging Face style Jinja template string, or None.
        special_tokens: ``bos_token``, ``eos_token``, ... strings the template may write;
            a token not given renders as empty text.
    """
    plain: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        msg = {"role": m.role, "content": m.text(i)}
        if m.name is not None:
            if not chat_template:
                raise OpenAIError(
                    f"messages.{i}.name: the fallback chat template has no place for names; omit it",
                    param=f"messages.{i}.name",
                )
            msg["name"] = m.name
        plain.append(msg)
    if chat_template:
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # lazy: only for checkpoints

        def _raise(msg: str) -> None:
            raise OpenAIError(f"messages: chat template refused the conversation: {msg}", param="messages")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        tokens = {"bos_token": "", "eos_token": ""} | dict(special_tokens or {})
        return env.from_string(chat_template).render(messages=plain, add_generation_prompt=True, **tokens)
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
