"""Block-level reuse inside parts, on the real model: a part whose text changed reuses its first blocks,
and the answer is still the uncached one, bit for bit (float32 and bfloat16).

--block-tokens 8 keeps the prompts short while every part spans several blocks.
"""

import pytest
import torch

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, Finished, PromptReport, SamplingParams, SegmentInput

BLOCK = 8
GUIDE = ("You are a coding agent working in a repository. Read files before you edit them, keep changes "
         "small, run the tests you touch, and explain each change in one sentence. ")


def seg(content: str, id_: str) -> SegmentInput:
    return SegmentInput(SegmentText(content, id_, segment_hash(content)))


def request(tenant: str, kind: str, segments=(), messages=(), prompt=None) -> EngineRequest:
    return EngineRequest(tenant, kind, tuple(segments), tuple(messages), prompt=prompt,
                         sampling=SamplingParams(max_tokens=4, temperature=0), keep_logits=True)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engines(request, load):
    loaded = load("default", request.param)
    # spans of 32 blocks hold every prompt here; the start-up check tries each run length up to the span
    config = dict(model="default", dtype=request.param, block_tokens=BLOCK, prefill_span_tokens=32 * BLOCK)
    cached = Engine(ServeConfig(cache_bytes=1 << 30, **config), loaded=loaded)
    uncached = Engine(ServeConfig(cache_bytes=0, **config), loaded=loaded)
    yield cached, uncached
    cached.close()
    uncached.close()


def run_both(engines, req: EngineRequest) -> tuple[PromptReport, Finished]:
    cached, uncached = engines
    before = cached.executor.runner.num_prefill_tokens
    report, *_, finished = cached.run(req)
    skipped = report.prompt_tokens - (cached.executor.runner.num_prefill_tokens - before)
    base_report, *_, base = uncached.run(req)
    assert base_report.cached_tokens == 0
    assert finished.token_ids == base.token_ids
    assert torch.equal(finished.first_logits, base.first_logits), "first-token logits differ"
    assert report.cached_tokens == skipped, "reported cached tokens must be the tokens prefill skipped"
    cached.tree.check()
    return report, finished


def segment_tokens(engines, req: EngineRequest) -> tuple[int, ...]:
    prompt = engines[0].executor.build_prompt(req)
    return next(p.token_ids for p in prompt.parts if p.kind == "segment")


# Where the text changes: a first block, a middle one, the last. (The module's engines are built once per
# dtype: overriding their parameter here would build a pair for each case, as many seconds as the cases.)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_segment_whose_text_changed_reuses_its_first_blocks(engines, where):
    text = GUIDE * 3
    cut = {"start": 20, "middle": len(text) // 2, "end": len(text) - 10}[where]
    changed = text[:cut] + "Never" + text[cut + 5:]
    tenant = f"changed-{where}"
    question = [{"role": "user", "content": "What do you do first?"}]
    first, _ = run_both(engines, request(tenant, "chat", [seg(text, "guide")], question))
    assert [r.status for r in first.receipts] == ["computed"]
    report, _ = run_both(engines, request(tenant, "chat", [seg(changed, "guide")], question))
    old = segment_tokens(engines, request(tenant, "chat", [seg(text, "guide")], question))
    new = segment_tokens(engines, request(tenant, "chat", [seg(changed, "guide")], question))
    assert len(new) > 4 * BLOCK, "the segment must span several blocks"
    same = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    expected = same // BLOCK * BLOCK
    receipt, = report.receipts
    assert (receipt.status, receipt.cached_tokens, receipt.tokens) == (
        "partial" if expected else "computed", expected, len(new))
    head = report.parts[0]["tokens"]
    assert report.cached_tokens == head + expected


def test_a_repeated_completion_prompt_caches_all_but_its_last_block(engines):
    prompt = GUIDE * 2
    first, _ = run_both(engines, request("completion", "completion", prompt=prompt))
    assert first.cached_tokens == 0
    second, _ = run_both(engines, request("completion", "completion", prompt=prompt))
    last_block = first.prompt_tokens - (first.prompt_tokens - 1) // BLOCK * BLOCK
    assert second.cached_tokens == first.prompt_tokens - last_block > 0


def test_two_single_turn_chats_share_the_injected_system_turn(engines):
    first, _ = run_both(engines, request("chats", "chat", messages=[{"role": "user", "content": "Count to 0."}]))
    second, _ = run_both(engines, request("chats", "chat", messages=[{"role": "user", "content": "Count to 1."}]))
    injected = second.parts[0]
    assert (injected["kind"], injected["role"]) == ("template", "system")
    assert injected["cached_tokens"] == injected["tokens"] > 0
    assert second.cached_tokens >= injected["tokens"]
    assert first.cached_tokens == 0


def test_a_cached_prefix_ending_inside_an_uncached_span_gives_the_uncached_answer(engines):
    """The uncached run computes the whole prompt (< --prefill-span-tokens) in one forward; the cached run
    starts at a block boundary inside it and computes the rest in a forward of its own."""
    text = GUIDE * 3
    cut = len(text) // 2
    changed = text[:cut] + "Never" + text[cut + 5:]
    question = [{"role": "user", "content": "Which file first?"}]
    run_both(engines, request("mid-span", "chat", [seg(text, "guide")], question))
    cached, uncached = engines
    forwards = [e.executor.runner.num_prefill_forwards for e in engines]
    report, _ = run_both(engines, request("mid-span", "chat", [seg(changed, "guide")], question))
    cached_forwards, uncached_forwards = (e.executor.runner.num_prefill_forwards - f for e, f in zip(engines, forwards))
    assert report.prompt_tokens < cached.config.prefill_span_tokens
    assert uncached_forwards == 1 and cached_forwards == 1
    assert 0 < report.cached_tokens < report.prompt_tokens - 2 * BLOCK, "the prefix must end mid-prompt"
