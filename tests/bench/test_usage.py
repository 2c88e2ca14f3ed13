import pytest
from openai.types.chat import ChatCompletionChunk

from segcache.bench.usage import from_llamacpp_log, from_openai_usage, from_segcache_usage

# The final streamed chunk of a segcache chat completion (DESIGN.md §2) as it arrives on the wire.
SEGCACHE_FINAL_CHUNK = {
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "smollm2-135m-instruct",
    "choices": [],
    "usage": {"prompt_tokens": 2233, "completion_tokens": 32, "total_tokens": 2265,
              "prompt_tokens_details": {"cached_tokens": 2120}, "input_tokens": 2233, "output_tokens": 32,
              "cached_prefix_tokens": 2120,
              "segments": [{"id": "global-rules", "hash": "sha256:" + "a" * 64, "tokens": 1500,
                            "cached_tokens": 1500, "status": "hit", "reason": None}]},
}


def test_segcache_usage_is_read_through_the_openai_sdk_models():
    chunk = ChatCompletionChunk.model_validate(SEGCACHE_FINAL_CHUNK)
    usage = from_segcache_usage(chunk.usage.model_dump())
    assert (usage.prompt_tokens, usage.reused_tokens, usage.computed_tokens) == (2233, 2120, 113)
    assert usage.completion_tokens == 32 and usage.source == "usage"


def test_segcache_usage_that_contradicts_itself_is_an_error():
    usage = dict(SEGCACHE_FINAL_CHUNK["usage"], prompt_tokens_details={"cached_tokens": 7})
    with pytest.raises(ValueError, match="disagrees"):
        from_segcache_usage(usage)


def test_openai_usage_without_cached_tokens_is_marked_estimated():
    usage = from_openai_usage({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105})
    assert (usage.reused_tokens, usage.source) == (0, "estimated")
    cached = from_openai_usage({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                                "prompt_tokens_details": {"cached_tokens": 64}})
    assert (cached.reused_tokens, cached.source) == (64, "usage")
