"""Agents of the multi-agent workload over HTTP, one turn at a time, and what the server said of each turn.

Agent i has the blocks of workload agent i mod 4 (shared A, B or C, D or E) and its own user messages
("... (agent i)"); each reply goes back into its history. Every turn streams with the official openai SDK
and records its TTFT, the usage (prompt and cached tokens, the tier each segment's cached tokens came
from) and the replica that answered (the `X-Segcache-Replica` header nginx adds; None without a router).

`replies` makes runs repeatable: the first run records each agent's replies, later runs send the same
history, so a rerun sends byte-identical requests whatever the decoding did.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from openai import OpenAI

from segcache.bench.workload import AGENTS, Step, Workload, messages_for, schedule, segments_for

AFFINITY_HEADER = "X-Segcache-Affinity"
REPLICA_HEADER = "x-segcache-replica"


@dataclass(frozen=True)
class Turn:
    agent_index: int
    turn: int
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int
    tier_tokens: dict[str, int]   # cached tokens of the segments, by the tier they came from
    replica: str | None


@dataclass
class AgentSession:
    """One agent's conversation: its steps in order, its history, the replies it recorded or replays."""
    client: OpenAI
    model_id: str
    workload: Workload
    agent_index: int
    affinity: str | None = None       # the X-Segcache-Affinity header (a router keys its hash on it)
    replies: dict = field(default_factory=dict)   # (agent_index, turn) -> reply, shared between runs
    history: tuple[dict, ...] = ()

    @property
    def steps(self) -> list[Step]:
        agent = AGENTS[self.agent_index % len(AGENTS)]
        turns = max(step.turn for step in self.workload.steps if step.agent.agent_id == 1)
        return [step for step in schedule(turns) if step.agent.agent_id == agent.agent_id]

    def run_all(self) -> list[Turn]:
        return [self.take(step) for step in self.steps]

    def take(self, step: Step) -> Turn:
        """Send this step (the agent's turn), record or replay its reply, extend the history."""
        user = f"{step.user_message} (agent {self.agent_index + 1})"
        step = Step(step.index, step.agent, step.turn, user)
        headers = {AFFINITY_HEADER: self.affinity} if self.affinity else {}
        started = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model_id, stream=True, temperature=0.0, seed=0, stream_options={"include_usage": True},
            messages=messages_for(self.workload, step, self.history, with_system=False),
            max_tokens=self.workload.max_tokens, extra_body={"segments": segments_for(self.workload, step)},
            extra_headers=headers)
        first, pieces, usage = None, [], None
        for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
            if any(choice.delta.content for choice in chunk.choices):
                first = first or time.perf_counter()
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
        ttft = (first or time.perf_counter()) - started
        if usage is None:
            raise RuntimeError("the server sent no usage chunk although stream_options.include_usage was set")
        reply = self.replies.setdefault((self.agent_index, step.turn), "".join(pieces))
        self.history += ({"role": "user", "content": user}, {"role": "assistant", "content": reply})
        return Turn(self.agent_index, step.turn, ttft, usage["prompt_tokens"], usage["cached_prefix_tokens"],
                    tier_tokens(usage), raw.headers.get(REPLICA_HEADER))


def tier_tokens(usage: dict) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for receipt in usage.get("segments") or ():
        if receipt.get("tier") and receipt.get("cached_tokens"):
            counts[receipt["tier"]] += receipt["cached_tokens"]
    return dict(counts)


def run_in_order(sessions: list[AgentSession]) -> list[Turn]:
    """The workload's own order, one request at a time: round after round, each agent's next turn."""
    queues = {session.agent_index: list(session.steps) for session in sessions}
    turns = []
    while any(queues.values()):
        for session in sessions:
            if queues[session.agent_index]:
                turns.append(session.take(queues[session.agent_index].pop(0)))
    return turns


@dataclass(frozen=True)
class RunFigures:
    """One run of the workload, summed: what the tables print."""
    turns: tuple[Turn, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def cached_tokens(self) -> int:
        return sum(t.cached_tokens for t in self.turns)

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def ttft_p50(self) -> float:
        return statistics.median(t.ttft_s for t in self.turns)

    def tiers(self) -> dict[str, int]:
        """Cached segment tokens by tier, summed over the run."""
        total: Counter[str] = Counter()
        for t in self.turns:
            total.update(t.tier_tokens)
        return dict(total)

    def replicas(self) -> dict[str, int]:
        """Requests per replica (its address), in address order."""
        return dict(sorted(Counter(t.replica or "-" for t in self.turns).items()))

    def ttft_percentile(self, percentile: float) -> float:
        values = sorted(t.ttft_s for t in self.turns)
        return values[min(len(values) - 1, round(percentile / 100 * (len(values) - 1)))]

    def agents_per_replica(self) -> dict[str, int]:
        """How many different agents each replica served, in address order."""
        agents: dict[str, set[int]] = {}
        for t in self.turns:
            agents.setdefault(t.replica or "-", set()).add(t.agent_index)
        return {replica: len(agents[replica]) for replica in sorted(agents)}
