"""Prompt assembly on the real tokenizer: parts cover the text, ids equal one joint tokenization."""

import pytest

from segcache.engine.model import load_tokenizer
from segcache.engine.prompt import PromptError, SegmentText, build_chat_prompt, build_completion_prompt


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer("default")


def _template_ids(tokenizer, messages, add_generation_prompt=True):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_segments_render_inside_one_system_turn(tokenizer):
    segments = [SegmentText("Rule one.", "A"), SegmentText("Skill two.", "B")]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = build_chat_prompt(tokenizer, segments, messages)
    expected = [{"role": "system", "content": "Rule one.\n\nSkill two.\n\nBe brief."}, {"role": "user", "content": "Hi"}]
    assert prompt.token_ids == _template_ids(tokenizer, expected)
    assert [p.kind for p in prompt.parts] == ["head", "segment", "segment", "message", "template", "message",
                                              "generation"]
    assert prompt.text.count("<|im_start|>system") == 1


def test_each_message_is_its_own_part(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}]
    prompt = build_chat_prompt(tokenizer, [], messages)
    assert prompt.token_ids == _template_ids(tokenizer, messages)
    # SmolLM2's template injects a default system turn when none is given: a part of its own.
    assert [(p.kind, p.role) for p in prompt.parts] == [("template", "system"), ("message", "user"),
                                                         ("message", "assistant"), ("message", "user"),
                                                         ("generation", "assistant")]


def test_the_injected_system_turn_is_shared_by_single_turn_chats(tokenizer):
    first, second = (build_chat_prompt(tokenizer, [], [{"role": "user", "content": f"Count to {n}."}]) for n in (0, 1))
    assert first.parts[0].text == second.parts[0].text
    assert first.parts[0].text.startswith("<|im_start|>system\n") and first.parts[0].text.endswith("<|im_end|>\n")
    assert first.parts[1].text == "<|im_start|>user\nCount to 0.<|im_end|>\n"
    given = build_chat_prompt(tokenizer, [], [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}])
    assert [p.kind for p in given.parts] == ["message", "message", "generation"]


def test_a_token_straddling_a_boundary_belongs_to_the_later_part(tokenizer):
    prompt = build_completion_prompt(tokenizer, [SegmentText("Hello wor", "A")], "ld peace")
    joint = tokenizer("Hello world peace")["input_ids"]
    assert prompt.token_ids == joint
    segment, rest = prompt.parts
    assert tokenizer.decode(list(segment.token_ids)) == "Hello"
    assert tokenizer.decode(list(rest.token_ids)) == " world peace"


def test_reject_policy_names_the_split_segment(tokenizer):
    with pytest.raises(PromptError) as caught:
        build_completion_prompt(tokenizer, [SegmentText("Hello wor", "greeting")], "ld", reject_split=True)
    assert caught.value.code == "segment_boundary_split"
    assert "greeting" in str(caught.value)
    clean = build_completion_prompt(tokenizer, [SegmentText("Hello.", "greeting")], " world", reject_split=True)
    assert clean.token_ids == tokenizer("Hello. world")["input_ids"]


def test_part_keys_depend_on_text_and_kind(tokenizer):
    one = build_chat_prompt(tokenizer, [SegmentText("A.", "a")], [{"role": "user", "content": "x"}])
    two = build_chat_prompt(tokenizer, [SegmentText("A.", "other-id")], [{"role": "user", "content": "y"}])
    assert [p.key for p in one.parts[:3]] == [p.key for p in two.parts[:3]]   # ids are labels only
    assert one.parts[3].key != two.parts[3].key


def _conversations():
    turns = [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "On its way."},
             {"role": "user", "content": " spaced  "}, {"role": "tool", "content": '{"ok": true}'},
             {"role": "assistant", "content": ""}, {"role": "user", "content": "Thanks\n\n"}]
    yield turns[:1]
    yield turns
    yield [{"role": "system", "content": "Be brief."}, *turns]
    yield [{"role": "user", "content": "has \x00segcache-cut-3\x00 inside"}, *turns]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("segments", [[], [SegmentText("Rules.", "rules")]])
def test_messages_are_cut_exactly_as_rendering_prefix_by_prefix_would(tokenizer, index, segments):
    from segcache.engine import prompt as module

    conversation = list(_conversations())[index]
    linear = build_chat_prompt(tokenizer, segments, conversation)
    original = module._message_parts
    module._message_parts = module._message_parts_by_prefixes
    try:
        reference = build_chat_prompt(tokenizer, segments, conversation)
    finally:
        module._message_parts = original
    assert [(p.kind, p.role, p.text, p.token_ids) for p in linear.parts] == \
        [(p.kind, p.role, p.text, p.token_ids) for p in reference.parts]


def test_prompt_assembly_renders_a_few_times_whatever_the_number_of_messages(tokenizer):
    calls = []
    render = tokenizer.apply_chat_template

    def counting(conversation, **kwargs):
        calls.append(len(conversation))
        return render(conversation, **kwargs)

    tokenizer.apply_chat_template = counting
    try:
        messages = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(400)]
        build_chat_prompt(tokenizer, [], messages)
    finally:
        del tokenizer.apply_chat_template
    # + 3 renders of at most 2 messages to find a system turn the template injects on its own
    assert len(calls) <= 6 + 3 and sum(calls) <= 5 * 400 + 5
