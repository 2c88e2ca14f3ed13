"""The three metrics on hand-built traces with known answers, and against their definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_builders import chatml_input, trace_of, words
from segcache.trace.metrics import analyze
from segcache.trace.records import Trace
from segcache.trace.readers import read_record
from segcache.trace.tokens import WordTokenizer, tokenize_trace

# Word-tokenizer sizes: a message is <|im_start|> role words... <|im_end|> = words + 3 tokens;
# the generation prompt <|im_start|> assistant is 2.
SYSTEM = ("system", words("s", 9))  # 12 tokens


def run(trace: Trace, pool_tokens: int | None = None):
    return analyze(trace, tokenize_trace(trace, WordTokenizer()), pool_tokens)


def hits(analysis) -> list[tuple[int, int, int, int]]:
    return [(r.input_tokens, r.prefix, r.substring, r.tree) for r in analysis.requests]


def test_pure_prefix_growth_hits_all_earlier_messages():
    users = [("user", words(f"u{k}x", 5)) for k in range(1, 6)]  # 8 tokens each
    trace = trace_of(*({"input": chatml_input(SYSTEM, *users[:k]), "output": ""} for k in range(1, 6)))
    # Request k: 12 + 8k + 2 tokens. The tree reuses the system message and the k-1 earlier users
    # (8k + 4); the prefix also matches the <|im_start|> that began the earlier generation prompt.
    assert hits(run(trace)) == [(22, 0, 0, 0)] + [(14 + 8 * k, 8 * k + 5, 8 * k + 4, 8 * k + 4) for k in range(2, 6)]


def test_pure_append_metrics_agree_within_one_chunk():
    users = [("user", words(f"u{k}x", 3 + k)) for k in range(1, 9)]  # lengths not aligned to 4
    trace = trace_of(*({"input": chatml_input(SYSTEM, *users[:k]), "output": ""} for k in range(1, 9)))
    for _, prefix, substring, tree in hits(run(trace)):
        assert abs(prefix - substring) < 4 and abs(prefix - tree) < 4 and abs(substring - tree) < 4


def test_middle_rewrite_loses_the_prefix_but_not_the_substrings():
    u1, u2, u3 = ("user", words("a", 5)), ("user", words("b", 5)), ("user", words("c", 5))
    rewritten = ("user", words("z", 5))
    trace = trace_of({"input": chatml_input(SYSTEM, u1, u2, u3), "output": ""},
                     {"input": chatml_input(SYSTEM, u1, rewritten, u3), "output": ""})
    # Request 2: system 0-11, u1 12-19, rewritten 20-27, u3 28-35, generation 36-37.
    # Prefix runs into the rewritten message's "<|im_start|> user"; chunks 0-19 and 28-35 are found.
    assert hits(run(trace)) == [(38, 0, 0, 0), (38, 22, 28, 20)]


def test_shuffled_tool_list_breaks_prefix_and_tree_but_not_substring():
    tools = [words(f"t{i}x", 8) for i in range(1, 5)]
    def system(order):
        return ("system", words("r", 4) + "\n" + "\n".join(tools[i] for i in order))  # 39 tokens
    user = ("user", words("q", 5))
    trace = trace_of({"input": chatml_input(system([0, 1, 2, 3]), user), "output": ""},
                     {"input": chatml_input(system([0, 2, 1, 3]), user), "output": ""})
    # Request 2 tokens: header 0-1, rules 2-5, T1 6-13, T3 14-21, T2 22-29, T4 30-37, <|im_end|> 38,
    # user 39-46, generation 47-48. Prefix stops at T3; chunks 12, 20 and 28 straddle a moved seam.
    assert hits(run(trace)) == [(49, 0, 0, 0), (49, 14, 36, 0)]


def test_reply_counts_for_prefix_but_the_tree_recomputes_it():
    system, u1, u2 = SYSTEM, ("user", words("a", 5)), ("user", words("b", 5))
    trace = trace_of({"input": chatml_input(system, u1), "output": "r1 r2 r3"},
                     {"input": chatml_input(system, u1, ("assistant", "r1 r2 r3"), u2), "output": ""})
    # Earlier sequence: system, u1, "<|im_start|> assistant r1 r2 r3" (25 tokens), all a prefix of
    # request 2. The server keeps no KV from decoding, so its tree stops after u1.
    assert hits(run(trace)) == [(22, 0, 0, 0), (36, 25, 24, 20)]


def test_lru_pool_forgets_the_least_recently_used_tokens():
    a, b = words("a", 20), words("b", 20)
    trace = trace_of({"input": a, "output": ""}, {"input": b, "output": ""}, {"input": a, "output": ""})
    assert hits(run(trace))[2] == (20, 20, 20, 0)  # one part, the last: the server always computes it
    # Pool of 30: adding B evicts A's ten longest prefixes (the prefix pool stays prefix-closed) and A's
    # first four 4-grams.
    assert hits(run(trace, pool_tokens=30))[2] == (20, 10, 16, 0)


def test_lru_tree_evicts_whole_least_recently_used_parts():
    a, b, q = ("user", words("a", 17)), ("user", words("b", 17)), ("user", words("q", 1))  # 20 and 4 tokens
    trace = trace_of({"input": chatml_input(a, q), "output": ""}, {"input": chatml_input(b, q), "output": ""},
                     {"input": chatml_input(a, q), "output": ""})
    assert hits(run(trace))[2][3] == 24
    assert hits(run(trace, pool_tokens=40))[2][3] == 0  # B's 26-token chain pushed out A's 26-token chain
    assert hits(run(trace, pool_tokens=60))[2][3] == 24


def test_hit_rates_count_the_first_request_in_the_denominator():
    same = {"input": chatml_input(("user", words("w", 7))), "output": ""}  # 10 + 2 tokens
    analysis = run(trace_of(same, same))
    assert analysis.input_tokens == 24 and analysis.hit_rate("prefix") == 0.5
    assert analysis.hit_rate("tree") == 10 / 24 and analysis.hit_rate("substring") == 12 / 24
    assert np.allclose(analysis.cumulative_rate("prefix"), [0.0, 0.5])


def naive_metrics(sequences: list[tuple[list[int], list[int]]]) -> list[tuple[int, int]]:
    """The definitions, word for word, in quadratic time."""
    out = []
    for index, (inp, _) in enumerate(sequences):
        pool = [i + o for i, o in sequences[:index]]
        prefix = max((next((n for n in range(min(len(inp), len(s))) if inp[n] != s[n]), min(len(inp), len(s)))
                      for s in pool), default=0)
        grams = {tuple(s[j: j + 4]) for s in pool for j in range(len(s) - 3)}
        substring = 4 * sum(tuple(inp[j: j + 4]) in grams for j in range(0, len(inp) - 3, 4))
        out.append((prefix, substring))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from("abc"), max_size=14), st.lists(st.sampled_from("abc"), max_size=4)),
                min_size=1, max_size=6))
def test_fast_metrics_match_their_definitions(requests):
    records = [{"input": " ".join(i), "output": " ".join(o)} for i, o in requests]
    trace = Trace("random", tuple(read_record(r)[1] for r in records), ("input-output",))
    tokenizer = WordTokenizer()
    tokenized = tokenize_trace(trace, tokenizer)
    expected = naive_metrics([(t.input_ids.tolist(), t.output_ids.tolist()) for t in tokenized])
    assert [(r.prefix, r.substring) for r in analyze(trace, tokenized).requests] == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a b", "c", "a b c d", "e f g"]), min_size=1, max_size=5),
                min_size=1, max_size=6))
def test_tree_never_exceeds_prefix_and_prefix_never_exceeds_substring_by_a_chunk(conversations):
    trace = trace_of(*({"input": chatml_input(*(("user", m) for m in c)), "output": "o"} for c in conversations))
    for _, prefix, substring, tree in hits(run(trace)):
        assert tree <= prefix < substring + 4


def test_tree_keeps_tenants_and_models_apart_while_prefix_pools_everything():
    text = chatml_input(SYSTEM, ("user", words("a", 5)))  # 12 + 8 + 2 tokens
    log = {"parts": [{"kind": "message", "role": "system", "text": text[:text.index("<|im_start|>user")], "tokens": 12},
                     {"kind": "message", "role": "user", "text": text[text.index("<|im_start|>user"):
                                                                      text.index("<|im_start|>assistant")], "tokens": 8},
                     {"kind": "generation", "role": "assistant", "text": "<|im_start|>assistant\n", "tokens": 2}],
           "input": text, "output": "", "model": "m"}
    trace = trace_of({**log, "tenant": "acme"}, {**log, "tenant": "globex"}, {**log, "tenant": "acme"},
                     {"input": text, "output": "", "model": "other"})
    assert [(r.prefix, r.tree) for r in run(trace).requests] == [(0, 0), (22, 0), (22, 20), (22, 0)]


def test_tree_reuses_the_blocks_of_a_part_before_its_changed_tail():
    # A 703-token system message (700 words + 3) whose word 600 changes: with 256-token blocks the tree
    # keeps blocks [0, 256) and [256, 512) of it; with 64-token blocks, every block before token 602.
    head, tail = words("s", 600), words("t", 99)
    first = {"input": chatml_input(("system", f"{head} a {tail}"), ("user", "hi")), "output": ""}
    second = {"input": chatml_input(("system", f"{head} b {tail}"), ("user", "hi")), "output": ""}
    trace = trace_of(first, second)
    tokenized = tokenize_trace(trace, WordTokenizer())
    assert [r.tree for r in analyze(trace, tokenized).requests] == [0, 512]
    assert [r.tree for r in analyze(trace, tokenized, block_tokens=64).requests] == [0, 576]
    assert analyze(trace, tokenized).requests[1].prefix == 602   # <|im_start|> system, then 600 words
