"""A real server killed with SIGKILL in the middle of requests and restarted on the same --disk-cache:
its KV comes back from disk (receipts say so), its named segments and hash-only references work again,
and its tree passes check()."""

import signal
import threading
import time

import httpx
import openai

from segcache.cache.keys import segment_hash

MODEL = "tiny-random-llama"
RULES = "Company rules: every answer cites the policy number it relies on."
SKILLS = "Support agent skills: refunds, shipping delays, address changes."


def ask(server, segments, question="Where is my parcel?"):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    return client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, extra_body={"segments": segments},
                                          messages=[{"role": "user", "content": question}])


def wait_on_disk(server, timeout=60.0):
    """Until every node of the tree has its file written (writes happen behind the requests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = httpx.get(server.base_url + "/cache").json()["nodes"]
        if nodes and all("disk" in n["tiers"] for n in nodes):
            return nodes
        time.sleep(0.2)
    raise AssertionError("the disk tier did not write the cached nodes in time")


def load_in_background(server, stop: threading.Event):
    def loop(index):
        while not stop.is_set():
            try:
                ask(server, [{"id": f"noise-{index}", "content": f"Filler block {index} " * 40}], f"Question {index}")
            except Exception:   # noqa: BLE001 - the server is killed under this load on purpose
                return
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    return threads


def test_kill_9_and_restart_serves_kv_names_and_texts_from_disk(serve, tmp_path):
    flags = ("--model", "tiny", "--disk-cache", str(tmp_path / "disk"))
    first = serve(*flags)
    assert httpx.put(first.base_url + "/segments/skills", json={"content": SKILLS}).status_code == 200
    segments = [{"id": "rules", "hash": segment_hash(RULES), "content": RULES}, {"name": "skills"}]
    before = ask(first, segments)
    assert [s["tier"] for s in ask(first, segments).usage.segments] == ["ram", "ram"]
    wait_on_disk(first)

    stop = threading.Event()
    threads = load_in_background(first, stop)
    time.sleep(1.0)
    first.process.send_signal(signal.SIGKILL)   # in the middle of the load: no shutdown, no flush
    first.process.wait(timeout=20)
    stop.set()
    for thread in threads:
        thread.join(timeout=20)

    second = serve(*flags)
    hash_only = [{"id": "rules", "hash": segment_hash(RULES)}, {"name": "skills"}]
    after = ask(second, hash_only)
    assert [(s["status"], s["tier"]) for s in after.usage.segments] == [("hit", "disk"), ("hit", "disk")]
    assert after.choices[0].message.content == before.choices[0].message.content
    assert httpx.get(second.base_url + "/segments/skills").json()["content"] == SKILLS
    inspected = httpx.get(second.base_url + "/cache", params={"check": "true"}).json()
    assert inspected["check"] == "ok" and inspected["disk"]["num_nodes"] >= 3
    metrics = httpx.get(second.url + "/metrics").text
    assert 'segcache_tenant_tier_hit_tokens_total{tenant="default",tier="disk"}' in metrics
    assert [s["tier"] for s in ask(second, hash_only).usage.segments] == ["ram", "ram"]


def test_clearing_the_cache_clears_the_disk_too(serve, tmp_path):
    flags = ("--model", "tiny", "--disk-cache", str(tmp_path / "disk"))
    server = serve(*flags)
    segments = [{"id": "rules", "hash": segment_hash(RULES), "content": RULES}]
    ask(server, segments)
    wait_on_disk(server)
    assert httpx.delete(server.base_url + "/cache").status_code == 200
    assert httpx.get(server.base_url + "/cache").json()["disk"]["num_nodes"] == 0
    assert [s["status"] for s in ask(server, segments).usage.segments] == ["computed"]
    assert list((tmp_path / "disk" / "kv").glob("*/*.kv")) == [] or wait_on_disk(server)
