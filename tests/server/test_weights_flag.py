"""`segcache serve --weights`: the flag reaches the engine, the API reports the format, bad pairs are refused."""

import subprocess
import sys

import httpx
import openai


def test_served_weight_format_is_reported_and_answers(serve):
    server = serve("--model", "tiny", "--weights", "int8")
    assert httpx.get(server.url + "/health").json()["weights"] == "int8"
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    assert client.models.list().data[0].to_dict()["weights"] == "int8"
    reply = client.chat.completions.create(model="tiny-random-llama", max_tokens=3, temperature=0,
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.completion_tokens >= 1


def test_a_dense_format_that_contradicts_the_dtype_is_refused_with_advice():
    result = subprocess.run([sys.executable, "-m", "segcache", "serve", "--model", "tiny", "--weights", "bf16",
                             "--dtype", "float32"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--weights bf16 runs in bfloat16" in result.stderr
