"""segcache lint on hand-made logs, each with one known cause of lost prefix reuse."""

import json

import pytest

from segcache.client.lint import common_prefix_len, lint, shared_tokens
from segcache.client.lint_logs import LogFormatError, read_log

RULES = "\n".join(f"- Rule {n}: keep functions short, name things for what they are, test behaviour {n}."
                  for n in range(1, 9))
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} a file of the project, "
          "at most 200 lines at a time", "parameters": {"type": "object", "properties": {
              "path": {"type": "string"}}, "required": ["path"]}}} for name in ("read", "write", "grep")]


def chat(system: str, user: str = "Fix the failing test in the parser module.", **extra):
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], **extra}


def write_log(tmp_path, records):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def only_cause(tmp_path, tokenize, records):
    report = lint(read_log(write_log(tmp_path, records)), tokenize)
    assert len(report.causes) == 1, report.as_text(verbose=True)
    return report.causes[0]


CASES = {
    "date": [chat(f"Today is 2024-05-01.\n\n{RULES}"), chat(f"Today is 2024-05-02.\n\n{RULES}", "Add a test.")],
    "time": [chat(f"Session started at 10:31:07.\n\n{RULES}"), chat(f"Session started at 10:42:55.\n\n{RULES}")],
    "path": [chat(f"Working directory: /home/alice/projects/shop\n\n{RULES}"),
             chat(f"Working directory: /srv/build/checkout/shop\n\n{RULES}")],
    "order": [chat("Skills:\n- read: open files\n- grep: search text\n- write: save files\n\n" + RULES),
              chat("Skills:\n- write: save files\n- read: open files\n- grep: search text\n\n" + RULES)],
    "whitespace": [chat(f"You are a careful engineer.\n\n{RULES}"),
                   chat(f"You are a careful engineer.\n\n---\n\n{RULES}")],
    "tool_schema": [chat(RULES, tools=TOOLS),
                    chat(RULES, tools=[TOOLS[0] | {"function": TOOLS[0]["function"] | {"description": "read a file"}},
                                       *TOOLS[1:]])],
    "system_message": [chat("You are a careful engineer.", RULES),
                       {"messages": [{"role": "system", "content": "You are a careful engineer."},
                                     {"role": "system", "content": "Reminder: answer briefly."},
                                     {"role": "user", "content": RULES}]}],
}


@pytest.mark.parametrize("cause", sorted(CASES))
def test_lint_names_the_one_cause_of_a_divergence(tmp_path, tokenize, cause):
    found = only_cause(tmp_path, tokenize, CASES[cause])
    assert found.cause == cause
    assert found.requests == 1
    assert found.tokens_lost >= len(tokenize(RULES)) - 20


def test_lint_calls_a_reordered_tool_list_order(tmp_path, tokenize):
    found = only_cause(tmp_path, tokenize, [chat(RULES, tools=TOOLS), chat(RULES, tools=TOOLS[::-1])])
    assert found.cause == "order"


def test_lint_loses_nothing_when_a_conversation_only_grows(tmp_path, tokenize):
    first = chat(RULES)
    grown = {"messages": [*first["messages"], {"role": "assistant", "content": "Done."},
                          {"role": "user", "content": "Now add a regression test."}]}
    report = lint(read_log(write_log(tmp_path, [first, grown])), tokenize)
    assert report.causes == ()
    first_tokens = len(tokenize(read_log(write_log(tmp_path, [first]))[0].text))
    assert report.reusable_tokens >= first_tokens - 5  # all but the generation prompt


def test_lint_compares_with_the_closest_earlier_request(tmp_path, tokenize):
    records = [chat(f"Today is 2024-05-01.\n\n{RULES}"), chat("Something else entirely.", "Write a poem."),
               chat(f"Today is 2024-05-01.\n\n{RULES}", "Another task for the same day."),
               chat(f"Today is 2024-05-02.\n\n{RULES}")]
    report = lint(read_log(write_log(tmp_path, records)), tokenize)
    assert [(d.request, d.earlier, d.cause) for d in report.divergences] == [(4, 3, "date")]


def test_lint_reads_segcache_trace_records(tmp_path, tokenize):
    def trace(date):
        parts = [{"kind": "segment", "role": "system", "id": "rules", "text": f"<|im_start|>system\n{RULES}"},
                 {"kind": "segment", "role": "system", "id": "env", "text": f"\n\ndate: {date}"},
                 {"kind": "message", "role": "system", "text": "\n\nBe brief.<|im_end|>\n"},
                 {"kind": "message", "role": "user", "text": "<|im_start|>user\nHi<|im_end|>\n"}]
        return {"time": 0, "tenant": "default", "model": "m", "endpoint": "/v1/chat/completions", "parts": parts,
                "input": "".join(p["text"] for p in parts), "output": "", "messages": [], "segments": [],
                "usage": {}, "timings": {}}
    # The volatile tail is last: a new date loses only the few tokens after it.
    report = lint(read_log(write_log(tmp_path, [trace("2024-05-01"), trace("2024-05-02")])), tokenize, min_run=4)
    assert [c.cause for c in report.causes] == ["date"]
    assert report.causes[0].tokens_lost < 20
    assert report.reusable_tokens > len(tokenize(RULES))


def test_lint_unwraps_request_response_records(tmp_path, tokenize):
    records = [{"request": r, "response": {"choices": []}} for r in CASES["path"]]
    assert only_cause(tmp_path, tokenize, records).cause == "path"


def test_lint_ranks_causes_by_tokens_lost(tmp_path, tokenize):
    short_rules = "Prefer small pure functions; document why, not what; keep the tests fast and honest."
    records = [chat(f"Today is 2024-05-01.\n\n{RULES}"), chat(f"Today is 2024-05-02.\n\n{RULES}"),
               chat(f"cwd /home/alice/src/app\n\n{short_rules}", "Short."),
               chat(f"cwd /home/bob/src/app\n\n{short_rules}", "Short.")]
    report = lint(read_log(write_log(tmp_path, records)), tokenize)
    assert [c.cause for c in report.causes] == ["date", "path"]
    assert report.causes[0].tokens_lost > report.causes[1].tokens_lost


def test_lint_rejects_a_line_that_is_not_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat("x")) + "\nnot json\n")
    with pytest.raises(LogFormatError, match=":2: not JSON"):
        read_log(path)


def test_common_prefix_len_finds_the_first_difference():
    assert common_prefix_len("abcdef", "abcxef") == 3
    assert common_prefix_len((1, 2, 3), (1, 2, 3, 4)) == 3
    assert common_prefix_len("", "a") == 0


def test_shared_tokens_counts_only_runs_of_min_run():
    earlier = tuple(range(100))
    assert shared_tokens(earlier, (500, *range(10, 40), 501), min_run=16) == 30
    assert shared_tokens(earlier, (500, *range(10, 20), 501), min_run=16) == 0


@pytest.mark.parametrize("before, after, cause", [
    ("Started 2024-05-01T10:31:07Z.", "Started 2024-05-01T10:45:00Z.", "time"),
    ("Started 2024-05-01T10:31:07Z.", "Started 2024-05-02T10:31:07Z.", "date"),
    ("Today is Friday, May 3, 2024.", "Today is Saturday, May 4, 2024.", "date"),
    ("Built at 1714557600.", "Built at 1714644000.", "time"),
    ("Instructions from C:\\Users\\ann\\repo\\AGENTS.md", "Instructions from C:\\Users\\bo\\repo\\AGENTS.md", "path"),
    ("Tools: grep, read, write.", "Tools: read, write, grep.", "order"),
    ("Be brief.   ", "Be brief.", "whitespace"),
    ("Answer in English.", "Answer in French.", "other"),
])
def test_lint_classifies_the_text_at_the_divergence(tmp_path, tokenize, before, after, cause):
    found = only_cause(tmp_path, tokenize, [chat(f"{before}\n{RULES}"), chat(f"{after}\n{RULES}")])
    assert found.cause == cause


def test_lint_on_a_real_trace_finds_the_front_loaded_date_and_passes_the_layout(serve, tmp_path, tokenize):
    """Two sessions a day apart: env block first costs the whole prompt; PromptLayout's order costs nothing."""
    import datetime as dt

    from segcache.client import Client, PromptLayout, Stability

    trace = tmp_path / "trace.jsonl"
    server = serve("--model", "tiny", "--trace-file", str(trace))
    client = Client(server.base_url)
    model = client.openai.models.list().data[0].id
    question = [{"role": "user", "content": "Fix the cart."}]
    for day, cwd in [(dt.date(2024, 5, 6), "/home/ann/shop"), (dt.date(2024, 5, 7), "/srv/ci/shop")]:
        env = f"Today is {day.isoformat()}. Working directory: {cwd}."
        client.chat(model=model, messages=[{"role": "system", "content": f"{env}\n\n{RULES}"}, *question],
                    max_tokens=2, temperature=0)
    front_loaded = lint(read_log(trace), tokenize)
    assert [c.cause for c in front_loaded.causes] == ["date"]
    assert front_loaded.causes[0].tokens_lost >= len(tokenize(RULES))

    first_lines = len(trace.read_text().splitlines())
    for day, cwd in [(dt.date(2024, 5, 6), "/home/ann/shop"), (dt.date(2024, 5, 7), "/srv/ci/shop")]:
        layout = PromptLayout(session_date=day).add("rules", RULES, Stability.GLOBAL).add_env(cwd=cwd)
        client.chat(model=model, messages=question, segments=layout.segments(), max_tokens=2, temperature=0)
    later = tmp_path / "later.jsonl"
    later.write_text("".join(line + "\n" for line in trace.read_text().splitlines()[first_lines:]))
    laid_out = lint(read_log(later), tokenize)
    # Only what follows the volatile tail (the question, the template) is recomputed.
    assert sum(c.tokens_lost for c in laid_out.causes) <= len(tokenize("<|im_end|>\n<|im_start|>user\nFix the "
                                                                       "cart.<|im_end|>\n<|im_start|>assistant\n"))
    assert laid_out.reusable_tokens >= len(tokenize(RULES))


def test_lint_resolves_hash_only_segments_from_earlier_lines(tmp_path, tokenize):
    from segcache.client import Segment

    rules, env = Segment(RULES, id="rules"), Segment("date: 2024-05-01", id="env")
    question = [{"role": "user", "content": "Go."}]
    records = [{"messages": question, "segments": [rules.payload(True), env.payload(True)]},
               {"messages": question, "segments": [rules.payload(False), Segment("date: 2024-05-02").payload(True)]}]
    prompts = read_log(write_log(tmp_path, records))
    assert prompts[1].text.startswith(f"<|im_start|>system\n{RULES}\n\ndate: 2024-05-02<|im_end|>")
    report = lint(prompts, tokenize)
    assert report.reusable_tokens >= len(tokenize(RULES))
