import datetime as dt

import pytest

from segcache.client.layout import PromptLayout, Stability, canonical_text

SKILLS = {"write": "Save a file.", "grep": "Search text.", "read": "Open a file."}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
         for name in ("write", "grep", "read")]


def session(cwd: str, day: dt.date, skill_order: list[str], task: str) -> PromptLayout:
    """A session built the way an agent would, in whatever order its sources happen to come."""
    layout = PromptLayout(session_date=day)
    layout.add_env(cwd=cwd, platform="linux", git_status="clean")
    layout.add("task", f"Task: {task}\n", Stability.TASK)
    layout.add_collection("skills", [(name, SKILLS[name]) for name in skill_order], Stability.AGENT, title="Skills")
    layout.add("rules", "You are a careful engineer.\r\nAnswer briefly.  \n\n", "global")
    layout.set_tools([t for name in skill_order for t in TOOLS if t["function"]["name"] == name])
    return layout


def test_two_sessions_share_bytes_up_to_the_volatile_tail():
    monday = session("/home/ann/shop", dt.date(2024, 5, 6), ["write", "grep", "read"], "fix the cart")
    tuesday = session("/srv/ci/checkout", dt.date(2024, 5, 7), ["read", "write", "grep"], "fix the cart")
    a, b = monday.segments(), tuesday.segments()
    assert [s.id for s in a] == ["rules", "skills", "task", "env"]
    assert [(s.content, s.hash) for s in a[:3]] == [(s.content, s.hash) for s in b[:3]]
    assert a[3].content != b[3].content
    assert monday.tools() == tuesday.tools()
    stable = monday.separator.join(s.content for s in a[:3])
    assert monday.system_text().startswith(stable) and tuesday.system_text().startswith(stable)


def test_layout_orders_blocks_stable_first_keeping_insertion_order_within_a_stability():
    layout = PromptLayout(dt.date(2024, 1, 1))
    for block_id, stability in [("t1", "task"), ("g1", "global"), ("v", "volatile"), ("a", "agent"), ("g2", "global")]:
        layout.add(block_id, block_id, stability)
    assert [b.id for b in layout.blocks()] == ["g1", "g2", "a", "t1", "v"]


def test_collections_and_tools_are_sorted_by_name():
    layout = PromptLayout(dt.date(2024, 1, 1)).add_collection("skills", SKILLS).set_tools(TOOLS)
    assert layout.segments()[0].content == "## grep\nSearch text.\n\n## read\nOpen a file.\n\n## write\nSave a file."
    assert [t["function"]["name"] for t in layout.tools()] == ["grep", "read", "write"]


def test_the_session_date_is_frozen_when_the_layout_is_made():
    layout = PromptLayout(dt.date(2024, 5, 6)).add_env(cwd="/x")
    assert layout.segments()[-1].content == "cwd: /x\ndate: 2024-05-06"
    assert PromptLayout().session_date == dt.date.today()


def test_system_text_is_one_turn_joined_by_the_canonical_separator():
    layout = PromptLayout(dt.date(2024, 1, 1)).add("a", "A\n\n\n").add("b", "\nB", Stability.AGENT)
    assert layout.system_text() == "A\n\nB"


def test_canonical_text_removes_drift_at_the_seams():
    assert canonical_text("\r\n  rules  \r\nmore\t\n\n") == "  rules\nmore"


def test_layout_refuses_a_duplicate_block_id_and_an_unknown_stability():
    layout = PromptLayout(dt.date(2024, 1, 1)).add("a", "A")
    with pytest.raises(ValueError, match="already in this layout"):
        layout.add("a", "again")
    with pytest.raises(ValueError, match="global, agent, task, volatile"):
        layout.add("b", "B", "weekly")
