"""The API tests' shared server: one real server on the default model, started once per session.

Each test gets it with its cache emptied first (DELETE /v1/cache, the route a user calls, which also
forgets the segment texts), so tests stay independent without each paying for an engine start.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from segcache.config import ServeConfig


@pytest.fixture(scope="session")
def default_server(app_server_for_session, load):
    return app_server_for_session(ServeConfig(model="default", cache_bytes=1 << 30), load("default", "auto"))


@pytest.fixture
def api_server(default_server):
    """The shared default-model server, its cache empty."""
    return default_server.cleared()


@pytest.fixture
def openai_client(api_server):
    return openai.OpenAI(base_url=api_server.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def anthropic_client(api_server):
    return anthropic.Anthropic(base_url=api_server.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def tokenizer(load):
    return load("default", "auto").tokenizer


@pytest.fixture(scope="session")
def count_tokens(tokenizer):
    """count_tokens(text) -> how many tokens the default tokenizer makes of it (no special tokens added)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
