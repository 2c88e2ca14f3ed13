import hashlib
import os
import subprocess
import sys

import pytest

from segcache.bench.workload import (AGENTS, DEFAULT_BLOCK_TOKENS, build_workload, messages_for, schedule,
                                     segments_for)


def _digest(workload) -> str:
    text = "\x00".join(block.text for block in workload.blocks)
    text += "".join(f"{s.agent.agent_id}/{s.turn}/{s.user_message}" for s in workload.steps)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("scale", [0.25, 1.0, 3.0])
def test_blocks_have_exactly_the_stated_token_counts(tokenizer, scale):
    workload = build_workload(tokenizer, scale=scale)
    for (name, size), block in zip(DEFAULT_BLOCK_TOKENS, workload.blocks):
        assert block.name == name
        assert block.num_tokens == round(size * scale)
        assert len(tokenizer.encode(block.text, add_special_tokens=False)) == block.num_tokens


def test_blocks_are_built_from_real_library_text(small_workload):
    a, b, c, d, e = small_workload.blocks
    assert a.text.startswith("# Global rules") and '"type": "function"' in a.text
    assert "sqlite3" in b.text and "## html" in c.text
    assert d.text.startswith("# Task\nCurrent file: json/decoder.py\n```python\n")
    assert "Current file: textwrap.py" in e.text
    assert len({block.text for block in small_workload.blocks}) == 5


def test_workload_is_identical_across_processes_and_hash_seeds(tokenizer, small_workload):
    script = ("from segcache.engine.model import load_tokenizer\n"
              "from segcache.bench.workload import build_workload\n"
              "import hashlib\n"
              "w = build_workload(load_tokenizer('default'), scale=0.25, turns=3, max_tokens=8)\n"
              "text = '\\x00'.join(b.text for b in w.blocks)\n"
              "text += ''.join(f'{s.agent.agent_id}/{s.turn}/{s.user_message}' for s in w.steps)\n"
              "print(hashlib.sha256(text.encode()).hexdigest())\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(small_workload)
    assert _digest(build_workload(tokenizer, scale=0.25, turns=3, max_tokens=8)) == _digest(small_workload)


def test_agents_send_the_brief_block_combinations():
    assert [agent.block_names for agent in AGENTS] == [("A", "B", "D"), ("A", "C", "E"), ("A", "B", "E"),
                                                       ("A", "C", "D")]


def test_schedule_runs_rounds_and_the_fourth_agent_arrives_late():
    steps = schedule(turns=3)
    assert [(s.agent.agent_id, s.turn) for s in steps] == [
        (1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2), (4, 1), (1, 3), (2, 3), (3, 3), (4, 2)]
    assert [s.index for s in steps] == list(range(11))
    assert [(s.agent.agent_id, s.turn) for s in schedule(turns=1)] == [(1, 1), (2, 1), (3, 1), (4, 1)]


def test_later_turns_append_the_reply_and_a_new_user_message(small_workload):
    second = next(s for s in small_workload.steps if s.agent.agent_id == 1 and s.turn == 2)
    first = small_workload.steps[0]
    history = ({"role": "user", "content": first.user_message}, {"role": "assistant", "content": "reply"})
    messages = messages_for(small_workload, second, history, with_system=False)
    assert messages == [*history, {"role": "user", "content": second.user_message}]
    assert second.user_message != first.user_message


def test_chat_requests_carry_the_segments_as_one_system_message(small_workload):
    step = small_workload.steps[2]  # agent 3: A+B+E
    a, b, e = (small_workload.block(name) for name in "ABE")
    system = messages_for(small_workload, step, (), with_system=True)[0]
    assert system == {"role": "system", "content": f"{a.text}\n\n{b.text}\n\n{e.text}"}
    segments = segments_for(small_workload, step)
    assert [s["id"] for s in segments] == ["global-rules", "backend-agent", "task-docs-file"]
    for segment in segments:
        assert segment["hash"] == "sha256:" + hashlib.sha256(segment["content"].encode()).hexdigest()


def test_a_scale_beyond_the_available_text_says_what_to_do(tokenizer):
    with pytest.raises(ValueError, match="smaller --scale"):
        build_workload(tokenizer, block_tokens=(("D", 10_000_000),))
