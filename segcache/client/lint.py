"""`segcache lint`: where a request log's prompts stop sharing a prefix, why, and what it costs.

For each request, the closest earlier request is the one sharing the longest token prefix (found
among its neighbours in sorted order, which is where the longest common prefix always is). The
prefix is what a prefix cache reuses. Past the first differing token, the tokens that still occur
in the earlier prompt (in runs of at least `min_run`) are what the divergence lost: a prefix
cache recomputes them although their text was sent before. Natural growth (a new message
appended) loses nothing; a date at the front of a long system prompt loses all of it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from segcache.client.lint_causes import classify
from segcache.client.lint_logs import LoggedPrompt

Tokens = tuple[int, ...]


@dataclass(frozen=True)
class Divergence:
    """One request against its closest earlier request."""

    request: int
    earlier: int
    byte: int               # first differing byte of the request's rendered prompt (UTF-8)
    token: int              # first differing token = tokens a prefix cache reuses
    input_tokens: int
    tokens_lost: int
    cause: str
    example: str


@dataclass(frozen=True)
class CauseTotal:
    cause: str
    tokens_lost: int
    requests: int
    example: str


@dataclass(frozen=True)
class LintReport:
    requests: int
    input_tokens: int
    reusable_tokens: int
    causes: tuple[CauseTotal, ...]
    divergences: tuple[Divergence, ...]

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "input_tokens": self.input_tokens,
                "reusable_tokens": self.reusable_tokens, "causes": [asdict(c) for c in self.causes]}

    def as_text(self, verbose: bool = False) -> str:
        share = 100 * self.reusable_tokens / self.input_tokens if self.input_tokens else 0.0
        lines = [f"{self.requests} requests, {self.input_tokens:,} input tokens, "
                 f"{self.reusable_tokens:,} reusable as a prefix ({share:.1f}%)"]
        if self.causes:
            lines.append(f"{'cause':<16}{'tokens lost':>12}{'requests':>10}  example")
            lines += [f"{c.cause:<16}{c.tokens_lost:>12,}{c.requests:>10}  {c.example}" for c in self.causes]
        else:
            lines.append("no divergence lost reusable tokens")
        if verbose:
            lines += [f"request {d.request}: {d.token:,} of {d.input_tokens:,} tokens shared with request "
                      f"{d.earlier}; {d.tokens_lost:,} lost ({d.cause})" for d in self.divergences]
        return "\n".join(lines)


def lint(prompts: Sequence[LoggedPrompt], tokenize: Callable[[str], Sequence[int]], min_run: int = 16) -> LintReport:
    """Compare every request with its closest earlier one; rank the causes by tokens lost."""
    token_ids = [tuple(tokenize(p.text)) for p in prompts]
    seen: list[tuple[Tokens, int]] = []  # (token ids, index), sorted
    divergences: list[Divergence] = []
    reusable = 0
    for index, ids in enumerate(token_ids):
        earlier, shared = _closest_earlier(seen, ids)
        insort(seen, (ids, index))
        reusable += shared
        if earlier is None:
            continue
        lost = shared_tokens(token_ids[earlier][shared:], ids[shared:], min_run)
        if lost:
            divergences.append(_divergence(prompts[earlier], prompts[index], shared, len(ids), lost))
    return LintReport(len(prompts), sum(map(len, token_ids)), reusable, _rank(divergences), tuple(divergences))


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the common prefix, by binary search on slice equality (C-speed comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def shared_tokens(earlier: Tokens, current: Tokens, min_run: int) -> int:
    """Tokens of `current` covered by some run of `min_run` tokens that also occurs in `earlier`."""
    if min(len(earlier), len(current)) < min_run:
        return 0
    windows = {earlier[i:i + min_run] for i in range(len(earlier) - min_run + 1)}
    covered, covered_to = 0, 0
    for i in range(len(current) - min_run + 1):
        if current[i:i + min_run] in windows:
            covered += i + min_run - max(i, covered_to)
            covered_to = i + min_run
    return covered


def _closest_earlier(seen: list[tuple[Tokens, int]], ids: Tokens) -> tuple[int | None, int]:
    """(index, shared prefix tokens) of the earlier request sharing the longest prefix; later wins ties."""
    position = bisect_left(seen, (ids,))
    best: tuple[int, int] | None = None
    for neighbour_ids, neighbour in seen[max(position - 1, 0):position + 1]:
        candidate = (common_prefix_len(neighbour_ids, ids), neighbour)
        best = candidate if best is None or candidate > best else best
    return (None, 0) if best is None else (best[1], best[0])


def _divergence(earlier: LoggedPrompt, current: LoggedPrompt, token: int, input_tokens: int,
                lost: int) -> Divergence:
    offset = common_prefix_len(earlier.text, current.text)
    cause = classify(earlier, current, offset)
    example = (f"request {current.number} vs {earlier.number} at byte {len(current.text[:offset].encode())}, "
               f"token {token}: {_snippet(earlier.text, offset)!r} -> {_snippet(current.text, offset)!r}")
    return Divergence(current.number, earlier.number, len(current.text[:offset].encode()), token,
                      input_tokens, lost, cause, example)


def _snippet(text: str, offset: int, width: int = 24) -> str:
    start = max(text.rfind("\n", 0, offset) + 1, offset - width)
    return text[start:offset + width]


def _rank(divergences: Sequence[Divergence]) -> tuple[CauseTotal, ...]:
    """Causes by tokens lost, most first; each with the example that lost the most."""
    groups: dict[str, list[Divergence]] = defaultdict(list)
    for d in divergences:
        groups[d.cause].append(d)
    totals = [CauseTotal(cause, sum(d.tokens_lost for d in group), len(group),
                         max(group, key=lambda d: d.tokens_lost).example) for cause, group in groups.items()]
    return tuple(sorted(totals, key=lambda t: (-t.tokens_lost, t.cause)))
