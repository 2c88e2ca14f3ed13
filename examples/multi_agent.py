"""Three agents sharing prompt blocks, against a local segcache server.

The product brief's scenario: a global block A (rules, tool schemas, output format), agent blocks
B (backend skills) and C (frontend skills), task blocks D and E.

    agent 1 (backend)   A + B + D
    agent 2 (frontend)  A + C + E
    agent 3 (docs)      A + B + E     reuses A -> B from agent 1

Each agent runs two turns. The audit table prints, per agent, the tokens read from the cache and
computed, and the cost at hosted-API prices with the cache and without it.

    segcache serve --model default --port 8000 &
    python examples/multi_agent.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging

from segcache.client import CacheAudit, Client, Conversation, Prices, PromptLayout, Stability

TOPICS = ("error handling", "naming", "logging", "tests", "configuration", "dependencies", "reviews",
          "performance", "security", "documentation", "releases", "migrations")


def rules(subject: str, count: int) -> str:
    """A deterministic block of numbered guidance lines about `subject`."""
    return "\n".join(f"{n}. For {subject}, {TOPICS[n % len(TOPICS)]}: keep changes small, explain why in the "
                     f"commit message, and check item {n} of the {subject} checklist before asking for review."
                     for n in range(1, count + 1))


def blocks(scale: int) -> dict[str, str]:
    tools = "\n".join(f"- {name}(path: string): {name} a file inside the repository"
                      for name in sorted(("read", "write", "grep", "list", "run_tests")))
    return {
        "A": f"You are one agent of a software team.\n\nTools:\n{tools}\n\nOutput format: a short plan, then "
             f"the change as a unified diff.\n\nGlobal rules:\n{rules('every change', 20 * scale)}",
        "B": f"Backend skills and project memory:\n{rules('the Python service', 8 * scale)}",
        "C": f"Frontend skills and project memory:\n{rules('the TypeScript app', 8 * scale)}",
        "D": f"Task: the /orders endpoint returns 500 when the cart is empty.\n{rules('this bug', 3 * scale)}",
        "E": f"Task: document and show the new discount field.\n{rules('this feature', 3 * scale)}",
    }


AGENTS = (("backend", "B", "D"), ("frontend", "C", "E"), ("docs", "B", "E"))


def layout_for(text: dict[str, str], agent: str, agent_block: str, task_block: str) -> PromptLayout:
    layout = PromptLayout(session_date=dt.date.today())
    layout.add("A", text["A"], Stability.GLOBAL)
    layout.add(agent_block, text[agent_block], Stability.AGENT)
    layout.add(task_block, text[task_block], Stability.TASK)
    return layout.add_env(agent=agent, cwd=f"/work/{agent}", platform="linux")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the segcache server")
    parser.add_argument("--model", help="model id (default: the server's first model)")
    parser.add_argument("--scale", type=int, default=1, help="multiply block sizes (1 = ~1.3k-token prompts)")
    parser.add_argument("--max-tokens", type=int, default=16, help="completion tokens per turn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("segcache.client").setLevel(logging.INFO)  # the audit's one line per call

    audit = CacheAudit(prices=Prices(new=5.00, read=0.50, output=15.00))
    client = Client(args.url.rstrip("/") + "/v1", audit=audit)
    model = args.model or client.openai.models.list().data[0].id
    text = blocks(args.scale)
    conversations = [Conversation(client, model, layout_for(text, *agent).segments(), label=agent[0])
                     for agent in AGENTS]
    for turn in ("Start: read the relevant code and give your plan.", "Continue with the change."):
        for conversation in conversations:
            conversation.send(turn, max_tokens=args.max_tokens, temperature=0)
    print()
    print(audit.table())
    summary = audit.summary()
    print(f"\nwith the cache ${summary.total.cost:.4f}, without ${summary.total.cost_uncached:.4f} "
          f"({100 * (1 - summary.total.cost / summary.total.cost_uncached):.0f}% saved); "
          f"segments resent after segment_not_found: {client.resends}")


if __name__ == "__main__":
    main()
