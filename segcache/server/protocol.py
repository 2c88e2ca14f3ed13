"""Request and response shapes at the HTTP edge. Pydantic lives here only; the engine sees dataclasses."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from segcache.engine.request import PromptReport, Receipt, SamplingParams
from segcache.engine.tools import render_tool_call, tools_prompt
from segcache.server.tool_protocol import ResponseFormat, Tool, ToolChoice


def _encodable(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone UTF-16 surrogate at character {exc.start}; send valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
Ttl = Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds")]


class _Lenient(BaseModel):
    # OpenAI clients send fields we do not act on (user, logprobs, ...): accept them quietly.
    model_config = ConfigDict(extra="allow")


class SegmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    hash: str | None = None
    content: Text | None = None
    name: str | None = None
    ttl_seconds: Ttl | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SegmentRef":
        if self.content is None and self.hash is None and self.name is None:
            raise ValueError("a segment needs `content`, `hash` or `name`")
        if self.name is not None and (self.content is not None or self.hash is not None):
            raise ValueError("a segment given by `name` takes its content from the registry: "
                             "send `name` alone, or `hash`/`content` without `name`")
        return self


class ContentPart(_Lenient):
    type: str                       # only "text" is read; others are refused by server/unsupported.py
    text: Text | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    tool_calls: list[dict] | None = None

    def text(self) -> str:
        text = "".join(p.text or "" for p in self.content) if isinstance(self.content, list) else (self.content or "")
        if self.tool_calls:   # a reply that called tools comes back with its calls, as the model wrote them
            calls = "\n".join(render_tool_call(f.get("name", ""), f.get("arguments", ""))
                              for f in (call.get("function", call) for call in self.tool_calls))
            text = f"{text}\n{calls}" if text else calls
        return text


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Generation(_Lenient):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: Text | list[Text] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, description="segcache generates one choice per request")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    segments: list[SegmentRef] = Field(default_factory=list)
    segment_boundary: Literal["reprocess", "reject"] = "reprocess"

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        logprobs, top_logprobs = self.logprobs_asked()
        return SamplingParams(max_tokens=self.max_tokens_or(default_max_tokens), temperature=self.temperature,
                              top_p=self.top_p, seed=self.seed, stop=tuple(stops),
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
                              logprobs=logprobs, top_logprobs=top_logprobs)

    def logprobs_asked(self) -> tuple[bool, int]:
        return False, 0

    def max_tokens_or(self, default: int) -> int:
        return self.max_tokens or default

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict] | None = None
    prompt_cache_key: str | None = None                # a routing hint: see server/prompt_cache.py
    prompt_cache_retention: str | None = None          # in_memory | 24h (others: 400)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None    # a forced call is one call; `auto` replies may hold several
    response_format: ResponseFormat | None = None
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def tools_text(self) -> str | None:
        """Tool schemas become one more block of the system turn, after the segments, in the order given.

        They are rendered whatever `tool_choice` says, so a request that may not call tools (a
        compaction) still shares its prefix with the main loop's requests.
        """
        if not self.tools:
            return None
        return tools_prompt([t.spec() for t in self.tools])

    def logprobs_asked(self) -> tuple[bool, int]:
        return self.logprobs, self.top_logprobs or 0

    def max_tokens_or(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def plain_messages(self) -> tuple[dict, ...]:
        # "developer" is OpenAI's newer name for the system role.
        return tuple({"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                     for m in self.messages)


class CompletionRequest(_Generation):
    prompt: Text | list[Text]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: StrictBool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    def logprobs_asked(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("segcache takes one prompt per request")
        return value

    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class WarmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    segments: list[SegmentRef] = Field(min_length=1)
    pin: StrictBool = False  # true pins the chain; false, when sent, unpins it
    segment_boundary: Literal["reprocess", "reject"] = "reprocess"

    @property
    def unpin(self) -> bool:
        return "pin" in self.model_fields_set and not self.pin


class RegistryPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: Text
    ttl_seconds: Ttl | None = None
    pin: StrictBool = False


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(report: PromptReport, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": report.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": report.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": report.cached_tokens},
        "input_tokens": report.prompt_tokens,
        "output_tokens": completion_tokens,
        "cached_prefix_tokens": report.cached_tokens,
        "segments": [receipt_json(r) for r in report.receipts],
    }


def receipt_json(receipt: Receipt) -> dict:
    return {"id": receipt.id, "hash": receipt.hash, "tokens": receipt.tokens,
            "cached_tokens": receipt.cached_tokens, "status": receipt.status, "reason": receipt.reason,
            "tier": receipt.tier}


def chat_completion(id_: str, model: str, text: str, finish_reason: str, usage_: dict, timings: dict) -> dict:
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage_, "timings": timings}


def chat_chunk(id_: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def text_completion(id_: str, model: str, text: str, finish_reason: str, usage_: dict, timings: dict) -> dict:
    return {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage_, "timings": timings}


def text_chunk(id_: str, model: str, text: str, finish_reason: str | None = None) -> dict:
    return {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(id_: str, model: str, object_: str, usage_: dict) -> dict:
    return {"id": id_, "object": object_, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage_}
