import pytest
from openai.types.chat import ChatCompletionChunk

from segcache.bench.usage import (from_llamacpp_log, from_openai_usage, from_segcache_usage, llamacpp_cached_bytes,
                                  llamacpp_saved_states)

# The final streamed chunk of a segcache chat completion as the server sent it (second request, one segment hit).
SEGCACHE_FINAL_CHUNK = {
    "id": "chatcmpl-6dc3a4e885b8444a95fec409", "object": "chat.completion.chunk", "created": 1795310134,
    "model": "tiny-random-llama", "choices": [],
    "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23,
              "prompt_tokens_details": {"cached_tokens": 17}, "input_tokens": 21, "output_tokens": 2,
              "cached_prefix_tokens": 17,
              "segments": [{"id": "global-rules",
                            "hash": "sha256:c6dde225503c54442899d78d72d55352cd3d4052a2ba3ff4340afc5beaf124bf",
                            "tokens": 6, "cached_tokens": 6, "status": "hit", "reason": None}]},
    "timings": {"queue_s": 0.000134, "prefill_s": 0.0035, "ttft_s": 0.008831, "decode_s": 0.006778,
                "total_s": 0.013254},
}


def test_segcache_usage_is_read_through_the_openai_sdk_models():
    chunk = ChatCompletionChunk.model_validate(SEGCACHE_FINAL_CHUNK)
    usage = from_segcache_usage(chunk.usage.model_dump())
    assert (usage.prompt_tokens, usage.reused_tokens, usage.computed_tokens) == (21, 17, 4)
    assert usage.completion_tokens == 2 and usage.source == "usage"


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


# Lines llama-cpp-python 0.3.36's server printed for two requests of this benchmark (--cache true).
LLAMACPP_MISS = """INFO:     127.0.0.1:38178 - "POST /v1/chat/completions HTTP/1.1" 200 OK
Llama._create_completion: cache miss
llama_perf_context_print:        load time =   19909.80 ms
llama_perf_context_print: prompt eval time =   19909.14 ms /   563 tokens (   35.36 ms per token,    28.28 tokens per second)
llama_perf_context_print:        eval time =    2549.38 ms /    11 runs   (  231.76 ms per token,     4.31 tokens per second)
llama_perf_context_print:       total time =   22675.50 ms /   574 tokens
llama_perf_context_print:    graphs reused =         10
Llama._create_completion: cache save
Llama.save_state: saving llama state
Llama.save_state: got state size: 13232593
Llama.save_state: copied llama state: 13232593
Llama.save_state: saving 13232593 bytes of llama state
Llama._create_completion: cache saved
"""
LLAMACPP_HIT = """INFO:     127.0.0.1:56384 - "POST /v1/chat/completions HTTP/1.1" 200 OK
state_read_data: reading state
state_read_data: - reading model info
state_read_data: - reading memory module
Llama._create_completion: cache hit
Llama.generate: 513 prefix-match hit, remaining 46 prompt tokens to eval
llama_perf_context_print:        load time =   19909.80 ms
llama_perf_context_print: prompt eval time =    1882.92 ms /    46 tokens (   40.93 ms per token,    24.43 tokens per second)
llama_perf_context_print:        eval time =    1220.89 ms /    11 runs   (  110.99 ms per token,     9.01 tokens per second)
llama_perf_context_print:       total time =    3744.36 ms /    57 tokens
llama_perf_context_print:    graphs reused =         10
Llama._create_completion: cache save
Llama.save_state: saving llama state
Llama.save_state: got state size: 13140385
Llama.save_state: copied llama state: 13140385
Llama.save_state: saving 13140385 bytes of llama state
Llama._create_completion: cache saved
"""


def test_llamacpp_cache_miss_computes_the_whole_prompt():
    usage = from_llamacpp_log(LLAMACPP_MISS)
    assert (usage.prompt_tokens, usage.reused_tokens, usage.computed_tokens) == (563, 0, 563)
    assert usage.completion_tokens == 12 and usage.source == "server log"


def test_llamacpp_prefix_match_is_read_as_reused_tokens():
    usage = from_llamacpp_log(LLAMACPP_HIT)
    assert (usage.prompt_tokens, usage.reused_tokens, usage.computed_tokens) == (559, 513, 46)


def test_llamacpp_log_without_timings_reads_as_nothing_yet():
    assert from_llamacpp_log('INFO:     127.0.0.1:1 - "POST /v1/chat/completions HTTP/1.1" 200 OK\n') is None


def test_llamacpp_fully_cached_prompt_needs_the_harness_count():
    log = "Llama.generate: full prompt already cached, skipping reset\n" + LLAMACPP_MISS.split("\n", 2)[2]
    usage = from_llamacpp_log(log, prompt_tokens=600)
    assert (usage.reused_tokens, usage.computed_tokens) == (600, 0)


def test_llamacpp_saved_states_add_up_to_its_cache_bytes():
    log = LLAMACPP_MISS + LLAMACPP_HIT
    assert llamacpp_saved_states(log) == 2
    assert llamacpp_cached_bytes(log) == 13232593 + 13140385
