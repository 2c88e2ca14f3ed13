"""No silent ignores: a field that would change the reply and is not implemented is a 400 naming it.

Harmless metadata (`user`, `metadata`, `store`, `service_tier`, `safety_identifier`,
`parallel_tool_calls`, `stream_options`, message `name` / `tool_call_id`) is accepted as is; the
list is documented in docs/clients.md.
"""

from __future__ import annotations

from segcache.server.errors import ApiError
from segcache.server.protocol import ChatCompletionRequest, CompletionRequest
from segcache.server.tool_protocol import reply_grammar

# Fields OpenAI (or a popular peer server) defines that would change the output here: why not, what instead.
_CHAT_FIELDS = {
    "functions": "the legacy `functions` field is not supported; send the same schemas as `tools`",
    "function_call": "the legacy `function_call` field is not supported; send `tool_choice`",
    "audio": "this model produces text only; drop `audio`",
    "prediction": "predicted outputs are not supported; drop `prediction`",
    "web_search_options": "this server has no web search; drop `web_search_options`",
    "reasoning_effort": "this model does not reason before answering; drop `reasoning_effort`",
    "reasoning": "this model does not reason before answering; drop `reasoning`",
}
_SAMPLER_FIELDS = {
    "top_k": "top_k is not supported; use `top_p` and `temperature`",
    "min_p": "min_p is not supported; use `top_p` and `temperature`",
    "repetition_penalty": "repetition_penalty is not supported; use `frequency_penalty` or `presence_penalty`",
    "guided_json": "guided_json is not supported; send `response_format` of type json_schema",
    "guided_regex": "guided_regex is not supported; send `response_format` of type json_schema",
    "guided_grammar": "guided_grammar is not supported; send `response_format` of type json_schema",
}


def check_chat(body: ChatCompletionRequest, vocab_size: int) -> None:
    """Raise ApiError(400, unsupported_parameter | invalid_parameter) for what this server cannot honour."""
    _check_extras(body, {**_CHAT_FIELDS, **_SAMPLER_FIELDS})
    _check_common(body, vocab_size)
    modalities = (body.model_extra or {}).get("modalities")
    if modalities not in (None, ["text"]):
        raise _unsupported("modalities", "this model produces text only; send modalities [\"text\"] or none")
    verbosity = (body.model_extra or {}).get("verbosity")
    if verbosity not in (None, "medium"):
        raise _unsupported("verbosity", "verbosity is not supported; drop it or send \"medium\"")
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "invalid_parameter", "top_logprobs")
    for i, message in enumerate(body.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if part.type != "text" or part.text is None:
                raise _unsupported(f"messages.{i}.content.{j}.type",
                                   f"content parts of type {part.type!r} are not supported: this model reads "
                                   "text only; send parts of type \"text\" (they are joined) or a string")
    try:
        reply_grammar(body.tools, body.tool_choice, body.response_format)
    except ValueError as exc:
        param = "tool_choice" if str(exc).startswith("tool_choice") else "response_format"
        raise ApiError(400, str(exc), "invalid_parameter", param) from None


def check_completion(body: CompletionRequest, vocab_size: int) -> None:
    _check_extras(body, _SAMPLER_FIELDS)
    _check_common(body, vocab_size)
    if body.suffix:
        raise _unsupported("suffix", "insertion with a suffix is not supported by this model; drop `suffix`")
    if body.best_of not in (None, 1):
        raise _unsupported("best_of", "segcache generates one candidate per request; send best_of 1 or none")
    if body.echo and body.logprobs is not None:
        raise _unsupported("echo", "echo with logprobs would need the prompt's log-probabilities, which are "
                                   "not computed; send one of them")


def _check_common(body, vocab_size: int) -> None:
    if body.n != 1:
        raise _unsupported("n", "segcache generates one choice per request; send n 1 (or several requests)")
    for key in body.logit_bias or {}:
        if not key.isdigit() or int(key) >= vocab_size:
            raise ApiError(400, f"logit_bias keys are token ids from 0 to {vocab_size - 1}; got {key!r}",
                           "invalid_logit_bias", "logit_bias")


def _check_extras(body, fields: dict[str, str]) -> None:
    for name in body.model_extra or {}:
        if name in fields:
            raise _unsupported(name, fields[name])


def _unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, message, "unsupported_parameter", param)
