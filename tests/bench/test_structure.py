import pytest

from segcache.bench.structure import ReuseModel, render


def _first_turn(workload, index):
    return workload.steps[index]


def _tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_rendered_parts_join_to_the_chat_template_output(tokenizer, small_workload):
    step = small_workload.steps[0]
    for by_segments in (True, False):
        prompt = render(tokenizer, small_workload, step, (), by_segments=by_segments)
        assert "".join(prompt.parts) == prompt.text
        assert list(prompt.token_ids) == tokenizer.encode(prompt.text, add_special_tokens=False)
    segments = render(tokenizer, small_workload, step, (), by_segments=True)
    assert segments.parts[1] == small_workload.block("A").text
    assert segments.parts[2] == "\n\n" + small_workload.block("B").text


def test_segment_tree_reuses_a_then_a_b_across_agents(tokenizer, small_workload):
    model = ReuseModel("segments")
    a1, a2, a3 = (render(tokenizer, small_workload, small_workload.steps[i], (), True) for i in range(3))
    assert model.expected_reused(a1) == 0
    model.record(a1, ())
    head_and_a = a1.tokens_before(len(a1.parts[0]) + len(a1.parts[1]))
    assert model.expected_reused(a2) == head_and_a
    model.record(a2, ())
    reused = model.expected_reused(a3)  # A+B+E after A+B+D: A and B hit, E does not
    assert reused == a1.tokens_before(sum(len(p) for p in a1.parts[:3]))
    assert reused > head_and_a + 0.9 * small_workload.block("B").num_tokens


def test_message_parts_miss_when_the_system_message_differs(tokenizer, small_workload):
    model = ReuseModel("messages")
    a1, a2 = (render(tokenizer, small_workload, small_workload.steps[i], (), False) for i in range(2))
    model.record(a1, ())
    assert model.expected_reused(a2) == 0


def test_a_later_turn_reuses_everything_before_the_reply(tokenizer, small_workload):
    first, second = small_workload.steps[0], small_workload.steps[3]
    assert (second.agent.agent_id, second.turn) == (1, 2)
    history = ({"role": "user", "content": first.user_message}, {"role": "assistant", "content": "The answer."})
    prompt1 = render(tokenizer, small_workload, first, (), True)
    prompt2 = render(tokenizer, small_workload, second, history, True)
    tree, prefix = ReuseModel("segments"), ReuseModel("prefix-any")
    reply_ids = tuple(tokenizer.encode("The answer.", add_special_tokens=False))
    for model in (tree, prefix):
        model.record(prompt1, reply_ids)
    # The tree stops before the generation prompt; the prefix cache also kept the decoded reply.
    user_end = len(prompt1.text) - len(prompt1.parts[-1])
    assert tree.expected_reused(prompt2) == prompt1.tokens_before(user_end)
    assert prefix.expected_reused(prompt2) > tree.expected_reused(prompt2)


def test_prefix_cache_without_entries_reuses_only_the_last_context(tokenizer, small_workload):
    a1, a2, a3 = (render(tokenizer, small_workload, small_workload.steps[i], (), False) for i in range(3))
    every, last = ReuseModel("prefix-any"), ReuseModel("prefix-last")
    for model in (every, last):
        model.record(a1, ())
        model.record(a2, ())
    assert every.expected_reused(a3) > last.expected_reused(a3) > 0  # A+B from agent 1 vs only A from agent 2


def test_a_tree_holds_each_shared_block_once_and_a_prefix_cache_holds_copies(tokenizer, small_workload):
    prompts = [render(tokenizer, small_workload, small_workload.steps[i], (), True) for i in range(3)]
    tree, prefix, none = ReuseModel("segments"), ReuseModel("prefix-any"), ReuseModel("none")
    for prompt in prompts:
        for model in (tree, prefix, none):
            model.record(prompt, ())
    a_tokens = small_workload.block("A").num_tokens
    assert prefix.held_tokens() == sum(len(p.token_ids) for p in prompts)
    assert prefix.held_tokens() - tree.held_tokens() >= 2 * a_tokens - 8
    assert none.held_tokens() == 0 and none.expected_reused(prompts[0]) == 0


def test_unknown_reuse_models_are_rejected():
    with pytest.raises(ValueError, match="unknown reuse model"):
        ReuseModel("radix")


def test_part_token_ends_cut_the_prompt_at_its_parts(tokenizer, small_workload):
    prompt = render(tokenizer, small_workload, small_workload.steps[0], (), by_segments=True)
    ends = prompt.part_token_ends
    assert len(ends) == len(prompt.parts) and ends[-1] == len(prompt.token_ids)
    assert list(ends) == sorted(ends)
    assert ends[1] - ends[0] == pytest.approx(small_workload.block("A").num_tokens, abs=2)
