"""The central invariant, on the real model: any cache state gives the answer of no cache, bit for bit.

For each request of a sequence, an engine whose cache the sequence keeps filling and an engine with
`--cache-bytes 0` must produce identical greedy token ids and identical first-token logits, in
float32 and in bfloat16, and in every weight format (dense, int8, int4: short parts and decode run
the integer kernels, longer parts the dense weights). And the tokens reported as cached must be exactly those prefill skipped.
"""

import json

import jsonschema
import pytest
import torch

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.grammar import json_grammar, tool_call_grammar
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, Finished, PromptReport, SamplingParams, SegmentInput
from segcache.engine.tools import ToolSpec, parse_tool_calls, tools_prompt

RULES = "You are a careful engineering assistant. Answer in one short sentence and name the file you would change."
BACKEND = "Backend agent: you own the HTTP API in server.py and the schema in db.py."
FRONTEND = "Frontend agent: you own the React components in ui/ and the styles."


def seg(content: str, id_: str) -> SegmentInput:
    return SegmentInput(SegmentText(content, id_, segment_hash(content)))


def chat(segments, messages, max_tokens=8) -> EngineRequest:
    return EngineRequest("tenant", "chat", tuple(segments), tuple(messages),
                         sampling=SamplingParams(max_tokens=max_tokens, temperature=0), keep_logits=True)


def completion(segments, prompt, max_tokens=6) -> EngineRequest:
    return EngineRequest("tenant", "completion", tuple(segments), prompt=prompt,
                         sampling=SamplingParams(max_tokens=max_tokens, temperature=0), keep_logits=True)


# float32 activations take the integer kernels' slow path (minutes per test): their row invariance is
# checked in test_weights.py; auto never picks them.
NUMERICS = [("float32", "float32"), ("bfloat16", "bf16"), ("bfloat16", "int8"), ("bfloat16", "int4")]
# Every format runs the core case (agents sharing segments); the other scenarios run once per dtype: float32,
# and bfloat16 in int4 (what auto serves on a bfloat16 CPU), whose longer parts run the dense bf16 weights.
ONE_PER_DTYPE = [NUMERICS[0], NUMERICS[3]]
one_format_per_dtype = pytest.mark.parametrize("engines", ONE_PER_DTYPE, ids=["/".join(n) for n in ONE_PER_DTYPE],
                                               indirect=True)


@pytest.fixture(scope="module", params=NUMERICS, ids=["/".join(n) for n in NUMERICS])
def engines(request, load):
    dtype, weights = request.param
    loaded = load("default", dtype, weights)
    assert loaded.weights.format == weights
    cached = Engine(ServeConfig(model="default", dtype=dtype, weights=weights, cache_bytes=1 << 30), loaded=loaded)
    uncached = Engine(ServeConfig(model="default", dtype=dtype, weights=weights, cache_bytes=0), loaded=loaded)
    yield cached, uncached
    cached.close()
    uncached.close()


def run_both(engines, request: EngineRequest) -> tuple[PromptReport, Finished]:
    cached, uncached = engines
    before = cached.executor.runner.num_prefill_tokens
    report, *_, finished = cached.run(request)
    skipped = report.prompt_tokens - (cached.executor.runner.num_prefill_tokens - before)
    base_report, *_, base = uncached.run(request)
    assert base_report.cached_tokens == 0
    assert finished.token_ids == base.token_ids
    assert torch.equal(finished.first_logits, base.first_logits), "first-token logits differ"
    assert finished.logprobs == base.logprobs
    assert report.cached_tokens == skipped, "reported cached tokens must be the tokens prefill skipped"
    cached.tree.check()
    return report, finished


def test_segments_across_agents_match_the_uncached_answer(engines):
    first, _ = run_both(engines, chat([seg(RULES, "A"), seg(BACKEND, "B")], [{"role": "user", "content": "Add a health endpoint."}]))
    assert first.cached_tokens == 0
    second, _ = run_both(engines, chat([seg(RULES, "A"), seg(FRONTEND, "C")], [{"role": "user", "content": "Fix the login button."}]))
    assert [r.status for r in second.receipts] == ["hit", "computed"]
    third, _ = run_both(engines, chat([seg(RULES, "A"), seg(BACKEND, "B")], [{"role": "user", "content": "Fix the login button."}]))
    assert [r.status for r in third.receipts] == ["hit", "hit"]
    assert third.cached_tokens > second.cached_tokens > 0


@one_format_per_dtype
def test_plain_multi_turn_chat_with_replies_fed_back(engines):
    messages = [{"role": "user", "content": "Name a prime number."}]
    previous_prompt = 0
    for turn in range(3):
        report, finished = run_both(engines, chat([], messages))
        if turn:
            assert report.cached_tokens >= previous_prompt - 4   # all but the old generation prompt
        previous_prompt = report.prompt_tokens
        messages += [{"role": "assistant", "content": finished.text}, {"role": "user", "content": "Another one?"}]


@one_format_per_dtype
def test_system_message_after_segments(engines):
    messages = [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "Hello"}]
    run_both(engines, chat([seg(RULES, "A")], messages))
    report, _ = run_both(engines, chat([seg(RULES, "A")], [{"role": "user", "content": "Hello"}]))
    assert report.receipts[0].status == "hit"


@one_format_per_dtype
def test_boundary_merge_is_recomputed_not_reused(engines):
    stem = "The build failed because the test runner timed out while compil"
    run_both(engines, completion([seg(stem, "S")], "ing the project."))
    report, _ = run_both(engines, completion([seg(stem, "S")], "\nNext step:"))
    receipt = report.receipts[0]
    # "compil" + "ing" merge in the first request; before "\n" the segment ends on its own token,
    # so its token ids differ and the engine recomputes the whole part.
    assert (receipt.status, receipt.reason) == ("computed", "boundary")


EOS = (2,)     # SmolLM2's <|im_end|>
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
           "required": ["city", "celsius"], "additionalProperties": False}


@one_format_per_dtype
def test_constrained_penalised_replies_with_logprobs_match_the_uncached_answer(engines):
    """Grammar masks, penalties, logit_bias and logprobs read only the logits row: the cache cannot change them."""
    spec = ToolSpec("get_weather", "Current weather for a city", WEATHER)
    tools = seg(tools_prompt([spec]), "tools")
    sampling = SamplingParams(max_tokens=48, temperature=0, frequency_penalty=0.8, presence_penalty=0.4,
                              logit_bias=((28, 3.0),), logprobs=True, top_logprobs=3)
    stopped = 0
    for grammar, question in ((json_grammar(WEATHER, "response_format"), "Weather in Paris, as JSON?"),
                              (tool_call_grammar([spec], "tool_choice"), "And in Rome?")):
        request = EngineRequest("tenant", "chat", (seg(RULES, "A"), tools), ({"role": "user", "content": question},),
                                sampling=sampling, keep_logits=True, grammar=grammar)
        report, finished = run_both(engines, request)
        assert len(finished.logprobs) == finished.completion_tokens - (finished.token_ids[-1] in EOS)
        if finished.finish_reason == "stop":      # a reply cut by max_tokens is a valid prefix only
            stopped += 1
            text = parse_tool_calls(finished.text)[1][0].arguments if grammar.param == "tool_choice" else finished.text
            jsonschema.validate(json.loads(text), WEATHER)
    assert [r.status for r in report.receipts] == ["hit", "hit"]
    assert stopped
