import pytest

from segcache.client.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenize():
    """The default model's tokenizer as text -> token ids (no special tokens added)."""
    tokenizer = load_tokenizer()
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
