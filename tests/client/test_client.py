"""Client against real servers: segments sent once, hash-only after, resent when forgotten, inline elsewhere."""

import httpx
import openai
import pytest

from segcache.client import Client, Segment

RULES = Segment("Global rules: answer briefly, cite the file you changed, never invent APIs. " * 6, id="rules")
SKILLS = Segment("Backend skills: Python services, SQL migrations, pytest fixtures. " * 4, id="backend")
QUESTION = [{"role": "user", "content": "Which file holds the order model?"}]


@pytest.fixture(scope="module")
def module_server(serve_for_module):
    return serve_for_module("--model", "tiny", "--cache-bytes", "64MiB")


@pytest.fixture
def server(module_server):
    """The module's server, its cache and segment texts cleared."""
    return module_server.cleared()


def ask(client, model, segments=(RULES, SKILLS)):
    return client.chat(model=model, messages=QUESTION, segments=segments, max_tokens=6, temperature=0)


def model_of(client):
    return client.openai.models.list().data[0].id


def sent_content(bodies):
    """Per request, for each segment sent: whether its content went over the wire."""
    return [["content" in s for s in body.get("segments", [])] for body in bodies]


def test_segments_go_with_content_once_then_by_hash(server, recorder):
    client = Client(server.base_url, http_client=recorder.client())
    model = model_of(client)
    first, second = ask(client, model), ask(client, model)
    assert sent_content(recorder.bodies) == [[True, True], [False, False]]
    assert [s["status"] for s in second.usage.segments] == ["hit", "hit"]
    assert second.choices[0].message.content == first.choices[0].message.content
    assert client.resends == 0 and client.segments_mode == "segments"


def test_cleared_cache_makes_the_client_resend_content_once(server, recorder):
    """DELETE /v1/cache also forgets the tenant's segment texts: the next hash-only request is refused."""
    client = Client(server.base_url, http_client=recorder.client())
    model = model_of(client)
    first = ask(client, model)
    assert httpx.delete(server.url + "/v1/cache").status_code == 200
    again = ask(client, model)
    assert sent_content(recorder.bodies) == [[True, True], [False, False], [True, True]]
    assert client.resends == 1
    assert [r.resent for r in client.audit.records] == [False, True]
    assert [s["reason"] for s in again.usage.segments] == ["new", "prefix_miss"]
    assert again.choices[0].message.content == first.choices[0].message.content
    ask(client, model)
    assert sent_content(recorder.bodies)[-1] == [False, False] and client.resends == 1


def test_a_restarted_server_gets_the_content_again(serve, server, recorder):
    client = Client(server.base_url, http_client=recorder.client())
    model = model_of(client)
    first = ask(client, model)
    restarted = serve("--model", "tiny", "--cache-bytes", "64MiB")
    client.openai.base_url = restarted.base_url
    again = ask(client, model)
    assert sent_content(recorder.bodies) == [[True, True], [False, False], [True, True]]
    assert client.resends == 1
    assert again.choices[0].message.content == first.choices[0].message.content


def test_a_segment_evicted_from_the_text_store_is_resent(serve, recorder):
    server = serve("--model", "tiny", "--segment-store-bytes", str(len(RULES.content) + 10))
    client = Client(server.base_url, http_client=recorder.client())
    model = model_of(client)
    ask(client, model, [RULES])
    ask(client, model, [SKILLS])  # its text pushes RULES out of the store
    ask(client, model, [RULES])
    assert sent_content(recorder.bodies) == [[True], [True], [False], [True]]
    assert client.resends == 1


def test_inline_mode_renders_the_prompt_segcache_renders(server, recorder):
    with_segments = ask(Client(server.base_url), model_of(Client(server.base_url)))
    client = Client(server.base_url, segments_mode="inline", http_client=recorder.client())
    inline = ask(client, model_of(client))
    assert "segments" not in recorder.bodies[0]
    assert recorder.bodies[0]["messages"][0] == {"role": "system", "content": RULES.content + "\n\n" + SKILLS.content}
    assert inline.usage.prompt_tokens == with_segments.usage.prompt_tokens
    assert inline.choices[0].message.content == with_segments.choices[0].message.content


@pytest.mark.parametrize("behaviour", ["reject-400", "reject-422", "ignore"])
def test_auto_mode_falls_back_inline_on_a_server_without_segments(server, plain_server, recorder, behaviour):
    reference = ask(Client(server.base_url), model_of(Client(server.base_url)))
    client = Client(plain_server(server.url, behaviour), http_client=recorder.client())
    model = reference.model
    first, second = ask(client, model), ask(client, model)
    assert client.segments_mode == "inline" and client.inline_fallbacks == 1
    assert ["segments" in body for body in recorder.bodies] == [True, False, False]
    assert first.choices[0].message.content == second.choices[0].message.content == reference.choices[0].message.content
    assert len(client.audit.records) == 2


def test_an_error_that_is_not_about_segments_is_raised_and_changes_nothing(server, recorder):
    client = Client(server.base_url, http_client=recorder.client())
    model = model_of(client)
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-model")
    assert client.segments_mode == "auto" and client.inline_fallbacks == 0
    assert len(recorder.bodies) == 2  # the request and its inline repetition: both refused for the model
    ask(client, model)
    assert client.segments_mode == "segments"


def test_requests_carry_an_affinity_header_for_cache_affine_routers(server):
    """deploy/nginx.conf.template hashes on X-Segcache-Affinity: the first segment's hash by default."""
    import httpx2

    sent = []
    http = httpx2.Client(event_hooks={"request": [lambda r: sent.append(r.headers.get("x-segcache-affinity"))]})
    client = Client(server.base_url, http_client=http)
    model = model_of(client)
    ask(client, model)
    client.chat(model=model, messages=QUESTION, segments=(SKILLS,), max_tokens=2, temperature=0,
                extra_headers={"X-Segcache-Affinity": "session-7"})
    assert sent[-2:] == [RULES.hash, "session-7"]
