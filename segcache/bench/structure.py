"""What each kind of cache can reuse on this workload, known in advance from its structure.

Servers report their own reuse (or do not); these models say what it should be, so the report
can check every figure against the workload:

    rendered prompt   <|im_start|>system\\n | A | \\n\\nB | \\n\\nD | <|im_end|>\\n | <|im_start|>user... | <|im_start|>assistant\\n
    parts (segments)  head                 | A | B      | D      | system end   | message            | generation prompt
    parts (messages)  system message (one part: A, B and D together)           | message            | generation prompt

A part tree reuses the longest chain of parts seen before; a prefix cache reuses the longest common
token prefix with a state it kept. Parts are ChatML, the template of the default model; render()
checks that against the tokenizer's own template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segcache.bench.workload import Step, Workload, messages_for

REUSE_MODELS = ("segments", "messages", "none", "prefix-any", "prefix-last")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: tuple[int, ...]
    token_ends: tuple[int, ...]  # character offset at which each token ends
    parts: tuple[str, ...]       # the text of each part, in order; they join to `text`

    @property
    def part_token_ends(self) -> tuple[int, ...]:
        """The token index at which each part ends: the cuts of a part-aligned prefill."""
        ends, offset = [], 0
        for part in self.parts:
            offset += len(part)
            ends.append(self.tokens_before(offset))
        return tuple(ends)

    def tokens_before(self, char_offset: int) -> int:
        """Tokens that end at or before char_offset: a token straddling it belongs to the later part."""
        return sum(1 for end in self.token_ends if end <= char_offset)


def render(tokenizer: Any, workload: Workload, step: Step, history: tuple[dict, ...],
           by_segments: bool) -> RenderedPrompt:
    messages = messages_for(workload, step, history, with_system=True)
    parts = _segment_parts(workload, step) if by_segments else [_turn(messages[0])]
    parts += [_turn(message) for message in messages[1:]] + ["<|im_start|>assistant\n"]
    text = "".join(parts)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text != expected:
        raise ValueError("the benchmark's structure model assumes a ChatML template; this tokenizer differs")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = tuple(end for _, end in encoding["offset_mapping"])
    return RenderedPrompt(text=text, token_ids=tuple(encoding["input_ids"]), token_ends=ends, parts=tuple(parts))


@dataclass
class ReuseModel:
    """Expected reused prompt tokens, request after request, for one kind of cache."""
    kind: str
    _chains: dict[tuple[str, ...], int] = field(default_factory=dict)  # chain of parts -> its last part's tokens
    _states: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in REUSE_MODELS:
            raise ValueError(f"unknown reuse model {self.kind!r}: one of {', '.join(REUSE_MODELS)}")

    def expected_reused(self, prompt: RenderedPrompt) -> int:
        if self.kind in ("segments", "messages"):
            return prompt.tokens_before(self._matched_chars(prompt))
        if self.kind.startswith("prefix"):
            return max((_common_prefix(state, prompt.token_ids) for state in self._states), default=0)
        return 0

    def record(self, prompt: RenderedPrompt, reply_ids: tuple[int, ...]) -> None:
        """Remember what the cache keeps after serving prompt: its parts, or its whole token state."""
        start = 0
        for i, end in enumerate(prompt.part_token_ends, start=1):
            self._chains.setdefault(prompt.parts[:i], end - start)
            start = end
        state = prompt.token_ids + reply_ids  # a prefix cache keeps the generated tokens too
        self._states = self._states + [state] if self.kind == "prefix-any" else [state]

    def held_tokens(self) -> int:
        """Prompt tokens the cache holds: each tree node once, but every prefix-cache state in full."""
        if self.kind in ("segments", "messages"):
            return sum(self._chains.values())
        return sum(len(state) for state in self._states) if self.kind.startswith("prefix") else 0

    def _matched_chars(self, prompt: RenderedPrompt) -> int:
        matched = 0
        for i in range(1, len(prompt.parts) + 1):
            if prompt.parts[:i] not in self._chains:
                break
            matched = i
        return sum(len(part) for part in prompt.parts[:matched])


def _segment_parts(workload: Workload, step: Step) -> list[str]:
    blocks = workload.blocks_of(step)
    texts = [blocks[0].text] + ["\n\n" + block.text for block in blocks[1:]]
    return ["<|im_start|>system\n"] + texts + ["<|im_end|>\n"]


def _turn(message: dict) -> str:
    return f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
