"""Tokenizing traces: each token owned by the part it ends in, as the server counts."""

from __future__ import annotations

import numpy as np

from segcache.engine.prompt import build_chat_prompt
from segcache.trace.chatml import render_parts
from segcache.trace.metrics import analyze
from segcache.trace.records import Part, Trace, TraceRequest
from segcache.trace.tokens import Encoded, HFTokenizer, WordTokenizer, load_transformers_tokenizer, tokenize_trace
from segcache.trace.tokens import tokens_per_part
from trace_builders import chatml_input, trace_of


def test_a_token_straddling_a_seam_belongs_to_the_later_part():
    request = TraceRequest(input="abcdef", output="", parts=(Part("prompt", None, "abc"), Part("prompt", None, "def")))
    encoded = Encoded(np.array([7, 8, 9]), starts=np.array([0, 2, 4]), ends=np.array([2, 4, 6]))  # "ab" "cd" "ef"
    assert tokens_per_part(request, encoded) == [1, 2]


def test_word_tokenizer_splits_chatml_markers_from_words():
    encoded = WordTokenizer().encode_batch(["<|im_start|>user\nhi there<|im_end|>\n"])[0]
    assert len(encoded.ids) == 5 and encoded.ends.tolist() == [12, 16, 19, 25, 35]


def test_served_tokenizer_matches_transformers_and_the_server_parts(served_tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "héllo  wörld\n\nok"}]
    trace = Trace("t", (TraceRequest(input="".join(p.text for p in render_parts(messages)), output="fine",
                                     parts=render_parts(messages)),), ("openai-chat",))
    ours = tokenize_trace(trace, served_tokenizer)[0]
    transformers_tokenizer = load_transformers_tokenizer("default")
    reference = HFTokenizer(transformers_tokenizer).encode_batch([trace.requests[0].input])[0]
    server = build_chat_prompt(transformers_tokenizer, [], messages)
    assert ours.input_ids.tolist() == reference.ids.tolist() == server.token_ids
    assert list(ours.part_token_ids) == [p.token_ids for p in server.parts]


def test_real_tokenizer_append_trace_prefix_is_tree_plus_one_marker(served_tokenizer):
    system = ("system", "You are a coding agent. Follow the repository rules and answer briefly.")
    users = [("user", "List the files under src."), ("user", "Open parser.py; what does tokenize() return?"),
             ("user", "Rename it to split_words everywhere."), ("user", "Now run pytest -q and paste failures.")]
    trace = trace_of(*({"input": chatml_input(system, *users[:k]), "output": "done"} for k in range(1, 5)))
    result = analyze(trace, tokenize_trace(trace, served_tokenizer))
    for k, hits in enumerate(result.requests[1:], 2):
        shared = served_tokenizer.encode_batch([chatml_input(system, *users[:k - 1])[:-len("<|im_start|>assistant\n")]])[0]
        assert hits.tree == len(shared.ids)  # the system message and every earlier user message
        assert hits.prefix == hits.tree + 1  # ... and the <|im_start|> of the earlier generation prompt
        # Every chunk inside the prefix is found; beyond it only the closing markup recurs
        # ("<|im_end|>\n<|im_start|>assistant\n" ends every earlier request too).
        assert hits.prefix - 4 < hits.substring <= hits.prefix + 8
