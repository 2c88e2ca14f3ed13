"""Each bad input, actually sent to a real server, gets its documented status and code."""

import pytest

from segcache.reliability.bad_inputs import LIMIT_FLAGS, cases, markdown_table, run_bad_inputs
from segcache.reliability.target import parse_keys, spawned_server

KEYS = "ka:alpha,kb:beta"
# Server bugs this table found. Strict: a fixed bug turns its test into a failure until its entry goes.
KNOWN_BUGS: dict[str, str] = {}
NAMES = [case.what for case in cases("m", 8, "probe", other_tenant=True)]


@pytest.fixture(scope="module")
def table(tiny_model_dir):
    limits = tuple(str(part) for item in LIMIT_FLAGS.items() for part in item)
    with spawned_server(parse_keys(KEYS), "tiny", "64MiB", ("--pin-bytes-per-tenant", "16KiB", *limits)) as target:
        rows, after = run_bad_inputs(target)
    return {row.case.what: row for row in rows}, after


@pytest.mark.parametrize("what", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"server bug: {KNOWN_BUGS[name]}"))
    if name in KNOWN_BUGS else name for name in NAMES])
def test_bad_input_gets_its_documented_answer(table, what):
    row = table[0][what]
    assert row.as_expected, f"{row.status} {row.code}: {row.message}"


def test_the_bad_inputs_change_nothing_and_a_normal_request_still_succeeds(table):
    _, after = table
    assert after[0].endswith(": unchanged")
    assert after[1] == "a normal chat request afterwards: 200"


def test_the_other_tenants_tree_checks_clean_after_the_bad_inputs(table):
    _, after = table
    assert after[-1] == "GET /v1/cache?check=true (beta): 200 ok"


def test_the_table_has_a_row_per_input(table):
    rows, _ = table
    text = markdown_table(list(rows.values()))
    assert len(text.splitlines()) == len(NAMES) + 2
    assert "| 1 | hash does not match content |" in text
