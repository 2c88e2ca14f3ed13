import subprocess
import sys

from segcache.bench.peers import SYSTEM_NAMES, SYSTEMS, PeakMemory, PeerOptions, gguf_path


def test_every_system_has_a_server_command():
    options = PeerOptions(model="tiny", cache_bytes="64MiB", threads=2)
    commands = {name: SYSTEMS[name].command(8123, options) for name in SYSTEM_NAMES}
    assert commands["segcache"][1:4] == ["-m", "segcache", "serve"]
    assert commands["segcache"][commands["segcache"].index("--cache-bytes") + 1] == "64MiB"
    assert commands["segcache-nocache"][commands["segcache-nocache"].index("--cache-bytes") + 1] == "0"
    assert commands["llamacpp-cache"][1:3] == ["-m", "llama_cpp.server"]
    assert "--cache" in commands["llamacpp-cache"] and "--cache" not in commands["llamacpp-nocache"]
    for name in ("llamacpp-cache", "llamacpp-nocache"):
        command = commands[name]
        assert command[command.index("--model") + 1] == gguf_path()
        assert command[command.index("--logits_all") + 1] == "false"
        assert command[command.index("--n_threads") + 1] == "2"


def test_segcache_gets_block_tokens_only_when_asked():
    default = SYSTEMS["segcache"].command(8123, PeerOptions(model="tiny"))
    sized = SYSTEMS["segcache"].command(8123, PeerOptions(model="tiny", block_tokens=64))
    assert "--block-tokens" not in default and sized[sized.index("--block-tokens") + 1] == "64"


def test_the_peer_runs_the_embedded_gguf_file():
    assert gguf_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(gguf_path(), "rb") as model:
        assert model.read(4) == b"GGUF"


def test_peak_memory_covers_the_children_of_the_server_process():
    # A parent whose child holds 64 MiB: the sampler must see the child's memory too.
    child = "import time; block = bytearray(64 << 20); time.sleep(3)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    process = subprocess.Popen([sys.executable, "-c", parent])
    try:
        with PeakMemory(process.pid) as memory:
            process.wait(timeout=30)
    finally:
        process.kill()
    assert memory.peak_bytes > 64 << 20

