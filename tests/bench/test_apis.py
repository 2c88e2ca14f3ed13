"""`segcache bench apis`: the three APIs report the same cached tokens for the same scenario."""

from segcache.bench import apis
from segcache.config import ServeConfig


def test_three_apis_agree_on_cached_tokens(app_server, load):
    server = app_server(ServeConfig(model="tiny", cache_bytes=1 << 26), load("tiny", "float32"))
    rows = apis.scenario(server.base_url, "tiny-random-llama", apis.build_blocks(600))
    for row in rows:
        assert row["chat"] == row["messages"] == row["responses"], row
        assert len(row["prompt_tokens"]) == 1
    first, second, third = (row["chat"] for row in rows)
    assert first == 0 < second < third                   # A, then A+B and the end of the system turn
    assert "| 3 docs | A+B+E |" in apis.table(rows)
