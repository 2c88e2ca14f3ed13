"""The multi-agent workload: shared prompt blocks, four agents, several turns each.

    block A  global rules + tool schemas     shared by every agent
    block B  backend skills + project memory agents 1 and 3
    block C  frontend skills                 agents 2 and 4
    block D  current file (json decoder)     agents 1 and 4
    block E  current file (textwrap)         agents 2 and 3

Agents 1..3 send A+B+D, A+C+E, A+B+E; every later turn appends the agent's reply and a new user
message; agent 4 arrives late with A+C+D. Block sizes are exact token counts of the default
tokenizer, so the reuse a cache can achieve is known in advance. Nothing here is random.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from segcache.bench import corpus

DEFAULT_BLOCK_TOKENS = (("A", 1500), ("B", 500), ("C", 500), ("D", 100), ("E", 100))

_RULES = """# Global rules for every agent of this team
You are one of several agents working on the same Python project. Follow these rules in every reply.
1. Read the task block at the end of this prompt before anything else; answer only what it asks.
2. Prefer the standard library. Never add a dependency without saying why in one sentence.
3. Keep changes small: one function or one test at a time, each with a docstring that says why.
4. Call a tool by writing one JSON object {"tool": NAME, "arguments": {...}} on its own line.
5. Never invent a tool or an argument: use only the schemas listed below, with their names.
6. When you are unsure, say so and name the file or function you would read next.
Output format: a one-line summary, then the change or the answer, then the tests to run.

# Tools (sorted by module, then by name)
"""

_SOURCES = {  # block name -> (label, header, module list, kind of text)
    "A": ("global-rules", _RULES, ("shutil", "os.path", "glob", "fnmatch", "subprocess", "json", "re",
                                   "difflib", "textwrap", "shlex", "tempfile", "zipfile", "tarfile",
                                   "gzip", "hashlib", "base64", "uuid", "functools", "itertools",
                                   "heapq", "bisect", "statistics", "operator", "math", "time"), "tools"),
    "B": ("backend-agent", "# Backend agent: skills and project memory\n",
          ("sqlite3", "http.server", "json", "logging", "socketserver", "wsgiref.simple_server",
           "selectors", "queue", "threading", "configparser", "csv", "pickle", "contextlib"), "docs"),
    "C": ("frontend-agent", "# Frontend agent: skills and project memory\n",
          ("html", "html.parser", "urllib.parse", "string", "mimetypes", "colorsys", "base64",
           "xml.etree.ElementTree", "email.message", "calendar", "locale", "gettext"), "docs"),
    "D": ("task-backend-file", "# Task\n", ("json.decoder", "json.encoder", "json.scanner", "sqlite3.dump",
                                            "http.cookies", "csv"), "source"),
    "E": ("task-docs-file", "# Task\n", ("textwrap", "string", "html", "colorsys", "fnmatch", "shlex"),
          "source"),
}
_TEXTS = {"tools": corpus.tool_schemas, "docs": corpus.reference_docs, "source": corpus.source_files}
_MORE = ("docs", "source")  # at large scales a block goes on with its modules' reference docs, then source

_QUESTIONS = {
    "backend": ("Where does the decoder in the current file handle an unterminated string? Quote the line.",
                "Write a unit test for that case using only the standard library.",
                "Which tool from the list would you call to run that test, and with which arguments?"),
    "frontend": ("Which function of the current file would you use to wrap a long label to 40 columns?",
                 "Show the call with the arguments you would pass, and the expected output.",
                 "Name one edge case of that call and how the page should handle it."),
    "docs": ("Summarise the current file in two sentences for the project's reference docs.",
             "Write a short docstring for the first public function of the current file.",
             "List the sections the reference page for this file should have."),
    "reviewer": ("Review the current file: name the riskiest function and say why in one sentence.",
                 "Suggest one small change that lowers that risk, as a diff of at most five lines.",
                 "Which tests from the backend agent's memory would catch a regression there?"),
}


@dataclass(frozen=True)
class Block:
    name: str        # "A".."E"
    label: str       # the segment id sent to the server
    text: str
    num_tokens: int  # exact, with the default tokenizer and no special tokens

    @property
    def segment_hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Agent:
    agent_id: int
    role: str
    block_names: tuple[str, ...]


AGENTS = (Agent(1, "backend", ("A", "B", "D")), Agent(2, "frontend", ("A", "C", "E")),
          Agent(3, "docs", ("A", "B", "E")), Agent(4, "reviewer", ("A", "C", "D")))


@dataclass(frozen=True)
class Step:
    """One request of the schedule: this agent's turn-th message."""
    index: int
    agent: Agent
    turn: int  # 1-based
    user_message: str


@dataclass(frozen=True)
class Workload:
    blocks: tuple[Block, ...]
    steps: tuple[Step, ...]
    max_tokens: int  # completion tokens per request

    def block(self, name: str) -> Block:
        return next(block for block in self.blocks if block.name == name)

    def blocks_of(self, step: Step) -> tuple[Block, ...]:
        return tuple(self.block(name) for name in step.agent.block_names)

    def system_text(self, step: Step) -> str:
        """The blocks as one system message: what the server renders from the same segments."""
        return "\n\n".join(block.text for block in self.blocks_of(step))


def build_workload(tokenizer: Any, scale: float = 1.0, turns: int = 3, max_tokens: int = 32,
                   block_tokens: tuple[tuple[str, int], ...] = DEFAULT_BLOCK_TOKENS) -> Workload:
    """Blocks sized to `scale` x block_tokens tokens, and the schedule of `turns` rounds."""
    if scale <= 0 or turns < 1 or max_tokens < 1:
        raise ValueError("scale must be positive, turns and max_tokens at least 1")
    blocks = tuple(_make_block(tokenizer, name, max(1, round(size * scale))) for name, size in block_tokens)
    return Workload(blocks=blocks, steps=schedule(turns), max_tokens=max_tokens)


def schedule(turns: int) -> tuple[Step, ...]:
    """Rounds of agents 1..3; agent 4 joins at the end of round 2 (or of the last round)."""
    early, late = AGENTS[:3], AGENTS[3]
    late_round = min(2, turns)
    turns_taken: list[tuple[Agent, int]] = []
    for round_number in range(1, turns + 1):
        turns_taken += [(agent, round_number) for agent in early]
        if round_number >= late_round:
            turns_taken.append((late, round_number - late_round + 1))
    return tuple(Step(index=i, agent=agent, turn=turn, user_message=_question(agent, turn))
                 for i, (agent, turn) in enumerate(turns_taken))


def messages_for(workload: Workload, step: Step, history: tuple[dict, ...], with_system: bool) -> list[dict]:
    """The chat messages of a step: earlier turns of this agent, then its new user message.

    With segments the blocks travel beside the messages; without, they are one system message.
    """
    system = [{"role": "system", "content": workload.system_text(step)}] if with_system else []
    return system + list(history) + [{"role": "user", "content": step.user_message}]


def segments_for(workload: Workload, step: Step) -> list[dict]:
    return [{"id": block.label, "hash": block.segment_hash, "content": block.text}
            for block in workload.blocks_of(step)]


def _question(agent: Agent, turn: int) -> str:
    questions = _QUESTIONS[agent.role]
    return questions[(turn - 1) % len(questions)]


def _make_block(tokenizer: Any, name: str, num_tokens: int) -> Block:
    label, header, module_names, kind = _SOURCES[name]
    kinds = (kind,) + tuple(more for more in _MORE if more != kind)
    pieces = itertools.chain.from_iterable(_TEXTS[each](module_names) for each in kinds)
    text = _fit(tokenizer, _gather(tokenizer, header, pieces, num_tokens), num_tokens)
    return Block(name=name, label=label, text=text, num_tokens=num_tokens)


def _gather(tokenizer: Any, header: str, pieces: Iterator[str], num_tokens: int) -> str:
    """Header and whole pieces until there are a few tokens more than needed."""
    parts, total = [header], _count(tokenizer, header)
    for piece in pieces:
        if total > num_tokens + 8:
            break
        parts.append(piece + "\n")
        total += _count(tokenizer, piece + "\n")
    else:
        if total <= num_tokens + 8:
            raise ValueError(f"not enough source text for a {num_tokens}-token block: use a smaller --scale")
    return "".join(parts)


def _fit(tokenizer: Any, text: str, num_tokens: int) -> str:
    """Cut text to exactly num_tokens tokens; a cut that re-tokenizes differently moves by one."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for shift in (0, -1, 1, -2, 2, -3, 3, -4, 4):
        candidate = tokenizer.decode(ids[:num_tokens + shift])
        if _count(tokenizer, candidate) == num_tokens:
            return candidate
    raise ValueError(f"cannot cut the block to exactly {num_tokens} tokens")


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))
