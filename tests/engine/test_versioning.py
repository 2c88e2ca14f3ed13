"""A change of model, dtype or chat template changes the scope: old KV is never reused."""

import dataclasses

from segcache.cache.keys import segment_hash
from segcache.cache.tree import SegmentTree
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, SamplingParams, SegmentInput

RULES = "Rules: answer in one word."


def ask(engine: Engine):
    request = EngineRequest("tenant", "chat", (SegmentInput(SegmentText(RULES, "rules", segment_hash(RULES))),),
                            ({"role": "user", "content": "hi"},), sampling=SamplingParams(max_tokens=1, temperature=0))
    return engine.run(request)[0]


def test_one_tree_two_configurations_never_share_kv(load):
    tree = SegmentTree(1 << 28)
    config = ServeConfig(model="tiny")
    float32 = Engine(dataclasses.replace(config, dtype="float32"), loaded=load("tiny", "float32"), tree=tree)
    bfloat16 = Engine(dataclasses.replace(config, dtype="bfloat16"), loaded=load("tiny", "bfloat16"), tree=tree)
    try:
        assert ask(float32).cached_tokens == 0
        assert ask(float32).receipts[0].status == "hit"
        report = ask(bfloat16)
        assert report.cached_tokens == 0 and report.receipts[0].status == "computed"
        assert float32.scope("tenant") != bfloat16.scope("tenant")
        assert len(tree.scopes()) == 2
        tree.check()
    finally:
        float32.close()
        bfloat16.close()


def test_scope_changes_with_model_weights_and_template(load):
    tiny, default = load("tiny", "float32"), load("default", "float32")
    config = ServeConfig(model="tiny", dtype="float32", cache_bytes=0)
    engines = [Engine(config, loaded=tiny), Engine(config, loaded=default),
               Engine(config, loaded=dataclasses.replace(tiny, tokenizer_fingerprint="another template")),
               Engine(config, loaded=dataclasses.replace(tiny, weights_fingerprint="retrained"))]
    try:
        assert len({e.scope("tenant") for e in engines}) == 4
    finally:
        for engine in engines:
            engine.close()
