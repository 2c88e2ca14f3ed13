import pytest

from segcache.bench.workload import Workload, build_workload


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer: the one every benchmark block is sized with."""
    from segcache.engine.model import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def small_workload(tokenizer) -> Workload:
    return build_workload(tokenizer, scale=0.25, turns=3, max_tokens=8)
