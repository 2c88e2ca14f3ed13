import hashlib
import re

import pytest

from segcache.cache.keys import (
    chain_key,
    parse_segment_hash,
    part_key,
    root_chain_key,
    scope_key,
    segment_hash,
)

HEX64 = re.compile(r"[0-9a-f]{64}")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_segment_hash_is_sha256_of_utf8_content():
    assert segment_hash("") == "sha256:" + EMPTY_SHA256
    text = "Règles globales ✓"
    assert segment_hash(text) == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_parse_segment_hash_round_trips_and_lowercases():
    digest = segment_hash("global rules")
    assert parse_segment_hash(digest) == digest
    assert parse_segment_hash("sha256:" + digest[7:].upper()) == digest


@pytest.mark.parametrize("text, fragment", [
    (EMPTY_SHA256, "add the 'sha256:' prefix"),
    ("md5:" + EMPTY_SHA256, "no 'sha256:' prefix"),
    ("SHA256:" + EMPTY_SHA256, "no 'sha256:' prefix"),
    ("sha256:" + EMPTY_SHA256[:-1], "63 hex digits, not 64"),
    ("sha256:" + EMPTY_SHA256 + "0", "65 hex digits, not 64"),
    ("sha256:" + "g" * 64, "not hex digits"),
    ("sha256: " + EMPTY_SHA256[1:], "not hex digits"),
    ("", "no 'sha256:' prefix"),
])
def test_parse_segment_hash_rejects_with_a_helpful_message(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        parse_segment_hash(text)
    assert "SHA-256 of the segment's UTF-8 content" in str(error.value)


def test_parse_segment_hash_rejects_non_strings():
    with pytest.raises(ValueError, match="must be a string"):
        parse_segment_hash(None)  # type: ignore[arg-type]


def test_parse_segment_hash_shortens_long_input_in_messages():
    with pytest.raises(ValueError) as error:
        parse_segment_hash("x" * 10_000)
    assert len(str(error.value)) < 300


def test_part_key_is_64_hex_and_deterministic():
    key = part_key("segment", "system", "rules")
    assert HEX64.fullmatch(key)
    assert key == part_key("segment", "system", "rules")


def test_part_key_fields_cannot_be_shifted_into_each_other():
    keys = {part_key("ab", "c", "d"), part_key("a", "bc", "d"), part_key("a", "b", "cd"), part_key("abc", "", "d"),
            part_key("segment", "user", "x"), part_key("message", "user", "x"), part_key("message", "system", "x")}
    assert len(keys) == 7


def test_part_key_accepts_lone_surrogates():
    assert HEX64.fullmatch(part_key("message", "user", "bad \ud800 text"))
    assert part_key("message", "user", "\ud800") != part_key("message", "user", "\ud801")


def test_scope_key_changes_with_every_field():
    fields = ["tenant", "model", "weights", "bfloat16", "tokenizer"]
    base = scope_key(*fields)
    assert HEX64.fullmatch(base)
    for index in range(len(fields)):
        changed = list(fields)
        changed[index] += "x"
        assert scope_key(*changed) != base


def test_scope_key_fields_cannot_be_shifted_into_each_other():
    assert scope_key("ab", "c", "w", "d", "t") != scope_key("a", "bc", "w", "d", "t")


def test_part_and_scope_keys_live_in_separate_domains():
    assert part_key("a", "b", "c") != scope_key("a", "b", "c", "", "")


def test_chain_key_depends_on_parent_key_and_tokens():
    root = root_chain_key(scope_key("t", "m", "w", "d", "k"))
    key = part_key("segment", "system", "rules")
    base = chain_key(root, key, (1, 2, 3))
    assert HEX64.fullmatch(base)
    assert base == chain_key(root, key, [1, 2, 3])
    assert base != chain_key(root, key, (1, 2, 4))
    assert base != chain_key(root, key, (1, 2))
    assert base != chain_key(root, part_key("segment", "system", "other"), (1, 2, 3))
    assert base != chain_key(root_chain_key(scope_key("u", "m", "w", "d", "k")), key, (1, 2, 3))
    assert chain_key(base, key, (1, 2, 3)) != base


def test_chain_key_handles_large_token_ids():
    root = root_chain_key(scope_key("t", "m", "w", "d", "k"))
    assert chain_key(root, part_key("a", "b", "c"), (2**40, 0)) != chain_key(root, part_key("a", "b", "c"), (0, 2**40))
