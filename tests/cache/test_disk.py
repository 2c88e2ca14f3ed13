"""The disk tier with plain bytes payloads (no torch): atomic files, verification, LRU under its budget,
recovery after a crash, scopes apart, and the registry and segment texts kept in the manifest."""

from segcache.cache.disk import DiskTier
from segcache.cache.manifest import Manifest, NodeRecord
from segcache.cache.persistent import PersistentRegistry, PersistentSegmentStore


def record(key: str, scope: str = "s" * 64, tokens=(1, 2, 3), pinned: bool = False) -> NodeRecord:
    return NodeRecord(key * 64, scope, "p" * 64, "k" * 64, None, tokens, 12, 0, None, pinned, 0.0)


def write(disk: DiskTier, rec: NodeRecord, payload: bytes) -> None:
    disk.put(rec, lambda: ({"dtype": "uint8", "shape": [len(payload)]}, payload))
    disk.flush()


def test_a_written_node_reads_back_only_with_its_scope_and_token_ids(tmp_path):
    disk = DiskTier(tmp_path, 1 << 20)
    write(disk, record("a"), b"kv-bytes-of-a")
    hit = disk.get("s" * 64, "a" * 64, (1, 2, 3))
    assert hit.payload == b"kv-bytes-of-a" and hit.meta == {"dtype": "uint8", "shape": [13]}
    assert disk.get("t" * 64, "a" * 64, (1, 2, 3)) is None   # another tenant's scope, the same chain key
    assert disk.get("s" * 64, "a" * 64, (1, 2, 4)) is None   # other token ids
    assert list(tmp_path.glob("kv/*/*.tmp")) == []
    disk.close()


def test_a_flipped_byte_or_a_truncated_file_is_a_miss_and_is_removed(tmp_path):
    disk = DiskTier(tmp_path, 1 << 20)
    for key, damage in (("a", lambda d: d[:-1]), ("b", lambda d: d[:-1] + bytes([d[-1] ^ 1]))):
        write(disk, record(key), b"payload-" + key.encode())
        path = next(tmp_path.glob(f"kv/*/{key * 64}.kv"))
        path.write_bytes(damage(path.read_bytes()))
        assert disk.get("s" * 64, key * 64, (1, 2, 3)) is None
        assert not path.exists() and disk.manifest.node(key * 64) is None
    assert disk.stats.corrupt == 2
    disk.close()


def test_lru_on_disk_keeps_its_budget_and_never_drops_pinned_nodes(tmp_path):
    disk = DiskTier(tmp_path, 1 << 20)
    write(disk, record("a", pinned=True), b"x" * 1000)
    size = disk.used_bytes()
    disk.capacity_bytes = 4 * size   # room for a, b, c, d
    for key in "bcd":
        write(disk, record(key), b"x" * 1000)
    disk.get("s" * 64, "b" * 64, (1, 2, 3))   # b is used: c is now the oldest unpinned
    write(disk, record("e"), b"x" * 1000)
    kept = {r.chain_key[0] for r in disk.manifest.nodes()}
    assert kept == {"a", "b", "d", "e"} and disk.used_bytes() <= disk.capacity_bytes
    assert disk.stats.evicted == 1
    disk.capacity_bytes = size   # only the pinned node fits: everything else goes, the pin stays
    write(disk, record("f"), b"x" * 1000)
    assert {r.chain_key[0] for r in disk.manifest.nodes()} == {"a"}
    disk.close()


def test_recovery_drops_temp_files_orphans_and_rows_without_files(tmp_path):
    disk = DiskTier(tmp_path, 1 << 20)
    write(disk, record("a"), b"kept")
    write(disk, record("b"), b"lost")
    disk.close()
    folder = next(tmp_path.glob("kv/*"))
    (folder / ("c" * 64 + ".tmp")).write_bytes(b"half written")
    (folder / ("d" * 64 + ".kv")).write_bytes(b"renamed, but killed before its row")
    (folder / ("b" * 64 + ".kv")).unlink()
    disk = DiskTier(tmp_path, 1 << 20)
    assert sorted(p.name[0] for p in folder.iterdir()) == ["a"]
    assert [r.chain_key[0] for r in disk.manifest.nodes()] == ["a"]
    assert disk.get("s" * 64, "a" * 64, (1, 2, 3)).payload == b"kept"
    disk.close()


def test_clearing_a_scope_drops_its_files_and_queued_writes(tmp_path):
    disk = DiskTier(tmp_path, 1 << 20)
    write(disk, record("a"), b"one")
    write(disk, record("b", scope="t" * 64), b"other tenant")
    disk.put(record("c"), lambda: ({}, b"queued"))
    disk.clear_scope("s" * 64)
    disk.flush()
    assert [r.chain_key[0] for r in disk.manifest.nodes()] == ["b"]
    assert not (tmp_path / "kv" / ("s" * 64)).exists()
    disk.close()


def test_registry_and_segment_texts_survive_a_new_process(tmp_path):
    manifest = Manifest(tmp_path / "m.sqlite")
    registry = PersistentRegistry(manifest)
    registry.put("acme", "rules", "Be brief.", 3, ttl_seconds=60.0, pin=True)
    registry.put("acme", "gone", "Temporary.", 2)
    registry.delete("acme", "gone")
    store = PersistentSegmentStore(manifest, capacity_bytes=20)
    store.put("acme", "sha256:" + "1" * 64, "first text")
    store.put("acme", "sha256:" + "2" * 64, "second text")   # pushes the first out of the 20-byte budget
    store.put("globex", "sha256:" + "3" * 64, "theirs")
    manifest.close()

    manifest = Manifest(tmp_path / "m.sqlite")
    registry, store = PersistentRegistry(manifest), PersistentSegmentStore(manifest, capacity_bytes=20)
    entry = registry.get("acme", "rules")
    assert (entry.content, entry.tokens, entry.ttl_seconds, entry.pin) == ("Be brief.", 3, 60.0, True)
    assert registry.get("acme", "gone") is None and registry.list("globex") == []
    assert store.get("acme", "sha256:" + "1" * 64) is None
    assert store.get("acme", "sha256:" + "2" * 64) == "second text"
    assert store.get("acme", "sha256:" + "3" * 64) is None and store.get("globex", "sha256:" + "3" * 64) == "theirs"
    store.clear("acme")
    assert PersistentSegmentStore(manifest, 20).get("acme", "sha256:" + "2" * 64) is None
    manifest.close()
