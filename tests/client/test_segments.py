import hashlib

from segcache.client.segments import Segment, inline_messages, segment_hash


def test_segment_hash_is_sha256_of_the_utf8_content():
    content = "Règles globales: réponds en français.\n"
    assert segment_hash(content) == "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()
    assert Segment(content).hash == segment_hash(content)


def test_segment_hash_changes_with_one_byte():
    assert Segment("rules").hash != Segment("rules ").hash


def test_segment_payload_sends_content_only_when_asked():
    segment = Segment("global rules", id="global", ttl_seconds=60)
    assert segment.payload(with_content=True) == {"id": "global", "hash": segment.hash, "content": "global rules",
                                                  "ttl_seconds": 60}
    assert segment.payload(with_content=False) == {"id": "global", "hash": segment.hash, "ttl_seconds": 60}


def test_inline_messages_put_segments_before_the_system_message_in_one_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = inline_messages([Segment("A"), Segment("B")], messages)
    assert rendered == [{"role": "system", "content": "A\n\nB\n\nBe brief."}, {"role": "user", "content": "Hi"}]
    assert messages[0]["content"] == "Be brief."  # the caller's list is not modified


def test_inline_messages_add_a_system_turn_when_there_is_none():
    rendered = inline_messages([Segment("A")], [{"role": "user", "content": "Hi"}])
    assert rendered == [{"role": "system", "content": "A"}, {"role": "user", "content": "Hi"}]
    assert inline_messages([], [{"role": "user", "content": "Hi"}]) == [{"role": "user", "content": "Hi"}]
