"""The disk tier on the real model: KV read back from disk gives the uncached answer bit for bit, a
damaged file is a recompute (never wrong KV), and a new engine on the same directory finds the KV."""

from pathlib import Path

import pytest
import torch

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, SamplingParams, SegmentInput

RULES = "You are a careful engineering assistant. Answer in one short sentence and name the file you would change."
BACKEND = "Backend agent: you own the HTTP API in server.py and the schema in db.py."


def chat(question: str, tenant: str = "tenant") -> EngineRequest:
    segments = tuple(SegmentInput(SegmentText(c, i, segment_hash(c))) for c, i in ((RULES, "rules"), (BACKEND, "backend")))
    return EngineRequest(tenant, "chat", segments, ({"role": "user", "content": question},),
                         sampling=SamplingParams(max_tokens=6, temperature=0), keep_logits=True)


def _setup(load, dtype: str, directory: Path):
    loaded = load("default", dtype)
    uncached = Engine(ServeConfig(model="default", dtype=dtype, cache_bytes=0), loaded=loaded)
    return loaded, dtype, uncached, directory


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def setup(request, load, tmp_path_factory):
    """Both dtypes, for what the KV's bytes on disk decide: a hit from disk gives the uncached answer."""
    made = _setup(load, request.param, tmp_path_factory.mktemp("disk"))
    yield made
    made[2].close()


@pytest.fixture(scope="module")
def setup_bf16(load, tmp_path_factory):
    """One dtype, for what does not depend on it: a file's checksum, the tenant in its key."""
    made = _setup(load, "bfloat16", tmp_path_factory.mktemp("disk"))
    yield made
    made[2].close()


def disk_engine(setup, directory: Path) -> Engine:
    loaded, dtype, _, _ = setup
    return Engine(ServeConfig(model="default", dtype=dtype, cache_bytes=1 << 30, disk_cache=str(directory)),
                  loaded=loaded)


def answer(engine: Engine, request: EngineRequest):
    report, *_, finished = engine.run(request)
    engine.tree.check()
    return report, finished


def test_ram_and_disk_hits_give_the_uncached_answer(setup, tmp_path):
    uncached = setup[2]
    _, base = answer(uncached, chat("Where is the schema?"))
    first = disk_engine(setup, tmp_path)
    report, finished = answer(first, chat("Where is the schema?"))
    assert [r.status for r in report.receipts] == ["computed", "computed"]
    report, finished = answer(first, chat("Where is the schema?"))
    assert [r.tier for r in report.receipts] == ["ram", "ram"]
    assert finished.token_ids == base.token_ids and torch.equal(finished.first_logits, base.first_logits)
    first.close()   # flushes the writes behind

    second = disk_engine(setup, tmp_path)   # a restarted server: empty RAM, the same directory
    prefilled = second.executor.runner.num_prefill_tokens
    report, finished = answer(second, chat("Where is the schema?"))
    assert [(r.status, r.tier) for r in report.receipts] == [("hit", "disk"), ("hit", "disk")]
    assert report.cached_tokens == report.prompt_tokens - (second.executor.runner.num_prefill_tokens - prefilled)
    assert ("disk", report.cached_tokens) in [(tier, tokens) for tier, tokens, _ in report.tier_hits]
    assert finished.token_ids == base.token_ids and torch.equal(finished.first_logits, base.first_logits)
    report, _ = answer(second, chat("Where is the schema?"))
    assert [r.tier for r in report.receipts] == ["ram", "ram"]
    second.close()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_file_is_a_recompute_with_the_same_answer(setup_bf16, tmp_path, damage):
    setup = setup_bf16
    uncached = setup[2]
    _, base = answer(uncached, chat("Which file holds the API?"))
    first = disk_engine(setup, tmp_path)
    answer(first, chat("Which file holds the API?"))
    first.close()
    files = sorted(tmp_path.glob("kv/*/*.kv"), key=lambda p: p.stat().st_size)
    assert len(files) >= 3   # head, rules, backend, message
    for path in files:
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) - 100]
        else:
            data[-7] ^= 0x01   # one bit of the KV payload
        path.write_bytes(bytes(data))

    second = disk_engine(setup, tmp_path)
    report, finished = answer(second, chat("Which file holds the API?"))
    assert report.cached_tokens == 0 and all(r.status == "computed" for r in report.receipts)
    assert second.disk.stats.corrupt == 1   # the first part failed; nothing after it is looked up
    assert finished.token_ids == base.token_ids and torch.equal(finished.first_logits, base.first_logits)
    second.close()


def test_tenants_never_load_each_others_files(setup_bf16, tmp_path):
    setup = setup_bf16
    first = disk_engine(setup, tmp_path)
    answer(first, chat("Where is the schema?", tenant="acme"))
    first.close()
    second = disk_engine(setup, tmp_path)
    report, _ = answer(second, chat("Where is the schema?", tenant="globex"))
    assert report.cached_tokens == 0 and second.disk.stats.loads == 0
    report, _ = answer(second, chat("Where is the schema?", tenant="acme"))
    assert [r.tier for r in report.receipts] == ["disk", "disk"]
    second.close()
