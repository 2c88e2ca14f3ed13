"""The load run's request mix: what one client of one tenant sends next.

Each tenant has its own shared blocks (global rules, agent skills, a registry entry) that its
clients reuse, as the agents of one organisation do; every request adds varying messages. Some
requests are deliberately wrong (unknown or foreign hashes, mismatches, unknown names, n=2, an
unknown model): they must get exactly the expected 4xx and leave the server serving everyone else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from segcache.cache.keys import segment_hash
from segcache.reliability.words import random_words

GUIDE_NAME = "load-guide"

# kind -> relative weight in the mix
MIX = {"chat": 28, "hash_only": 15, "named": 10, "multi_turn": 10, "stream": 10, "warm": 5,
       "completion": 5, "plain": 5, "bad": 11, "clear": 1}


@dataclass(frozen=True)
class Expect:
    """Acceptable answers: any of `statuses`; for errors, the `code` the server must name."""

    statuses: tuple[int, ...] = (200,)
    code: str | None = None


@dataclass(frozen=True)
class Step:
    kind: str
    method: str
    path: str
    body: dict | None = None
    expect: Expect = Expect()
    stream: bool = False
    resend: "Step | None" = None      # sent instead when the server has forgotten a hash-only segment
    num_segments: int = 0


@dataclass(frozen=True)
class TenantBlocks:
    """One tenant's stable prompt blocks, identical for all its clients."""

    tenant: str
    rules: str
    agents: tuple[str, ...]
    guide: str


def tenant_blocks(tenant: str, seed: int, rules_words: int, agent_words: int, num_agents: int = 3) -> TenantBlocks:
    rng = random.Random(f"{seed}:{tenant}")
    return TenantBlocks(tenant=tenant, rules=f"Rules for {tenant}. " + random_words(rng, rules_words),
                        agents=tuple(f"Agent {i} skills. " + random_words(rng, agent_words)
                                     for i in range(num_agents)),
                        guide=f"Guide of {tenant}. " + random_words(rng, agent_words))


@dataclass
class ClientMix:
    """Draws one client's requests; remembers its last exchange so it can continue the conversation."""

    rng: random.Random
    model: str
    own: TenantBlocks
    others: tuple[TenantBlocks, ...]
    max_tokens: int = 8
    clear_cache: bool = True      # include DELETE /v1/cache in the mix
    question_words: tuple[int, int] = (8, 40)
    history: list[dict] = field(default_factory=list)

    def next_step(self) -> Step:
        mix = MIX if self.clear_cache else {k: w for k, w in MIX.items() if k != "clear"}
        kind = self.rng.choices(list(mix), weights=list(mix.values()))[0]
        return getattr(self, f"_{kind}")()

    def remember(self, question: str, reply: str) -> None:
        self.history = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]

    # ------------------------------------------------------------ request kinds

    def _chat(self, stream: bool = False, kind: str = "chat") -> Step:
        segments = self._content_segments()
        return self._chat_step(kind, segments, [self._question()], stream)

    def _stream(self) -> Step:
        return self._chat(stream=True, kind="stream")

    def _hash_only(self) -> Step:
        with_content = self._content_segments()
        by_hash = [{"id": s["id"], "hash": s["hash"]} for s in with_content]
        messages = [self._question()]
        return replace(self._chat_step("hash_only", by_hash, messages),
                       resend=self._chat_step("hash_only", with_content, messages))

    def _named(self) -> Step:
        segments = [{"id": "rules", "hash": segment_hash(self.own.rules)}, {"name": GUIDE_NAME}]
        step = self._chat_step("named", segments, [self._question()])
        resend = self._chat_step("named", [{"id": "rules", "content": self.own.rules}, {"name": GUIDE_NAME}],
                                 step.body["messages"])
        return replace(step, resend=resend)

    def _multi_turn(self) -> Step:
        return self._chat_step("multi_turn", self._content_segments(), [*self.history, self._question()])

    def _plain(self) -> Step:
        return self._chat_step("plain", [], [{"role": "system", "content": self.own.rules}, self._question()])

    def _completion(self) -> Step:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                "segments": [{"id": "rules", "content": self.own.rules}],
                "prompt": "Notes: " + random_words(self.rng, self.rng.randint(*self.question_words))}
        return Step("completion", "POST", "/v1/completions", body, num_segments=1)

    def _warm(self) -> Step:
        body = {"model": self.model, "segments": self._content_segments()}
        return Step("warm", "POST", "/v1/cache/warm", body, num_segments=len(body["segments"]))

    def _clear(self) -> Step:
        # A running request of the same tenant may hold the chain: 409 cache_in_use is a correct answer.
        return Step("clear", "DELETE", "/v1/cache", expect=Expect((200, 409)))

    def _bad(self) -> Step:
        question = self._question()
        rules = self.own.rules
        foreign = self.rng.choice(self.others).rules if self.others else None
        cases = [
            ("unknown_hash", {"segments": [{"id": "x", "hash": segment_hash(random_words(self.rng, 12))}]},
             Expect((400,), "segment_not_found")),
            ("hash_mismatch", {"segments": [{"id": "x", "hash": segment_hash(rules + "!"), "content": rules}]},
             Expect((400,), "segment_hash_mismatch")),
            ("unknown_name", {"segments": [{"name": f"missing-{self.rng.randrange(10**6)}"}]},
             Expect((400,), "segment_not_found")),
            ("n_2", {"n": 2}, Expect((400,), "unsupported_parameter")),
            ("unknown_model", {"model": "no-such-model"}, Expect((404,), "model_not_found")),
        ]
        if foreign is not None:  # another tenant's block, by hash only: must be unknown here
            cases.append(("foreign_hash", {"segments": [{"id": "x", "hash": segment_hash(foreign)}]},
                          Expect((400,), "segment_not_found")))
        name, change, expect = self.rng.choice(cases)
        body = {"model": self.model, "max_tokens": self.max_tokens, "messages": [question], **change}
        return Step(f"bad:{name}", "POST", "/v1/chat/completions", body, expect=expect)

    # ------------------------------------------------------------ helpers

    def _content_segments(self) -> list[dict]:
        agent = self.rng.randrange(len(self.own.agents))
        return [{"id": "rules", "hash": segment_hash(self.own.rules), "content": self.own.rules},
                {"id": f"agent-{agent}", "hash": segment_hash(self.own.agents[agent]),
                 "content": self.own.agents[agent]}]

    def _question(self) -> dict:
        words = random_words(self.rng, self.rng.randint(*self.question_words))
        return {"role": "user", "content": "Task: " + words}

    def _chat_step(self, kind: str, segments: list[dict], messages: list[dict], stream: bool = False) -> Step:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                "messages": messages, "segments": segments}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return Step(kind, "POST", "/v1/chat/completions", body, stream=stream, num_segments=len(segments))
