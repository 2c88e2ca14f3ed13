"""What a trace is once read: requests made of prompt parts, whatever file shape they came from."""

from __future__ import annotations

from dataclasses import dataclass

PART_KINDS = ("head", "segment", "message", "template", "generation", "prompt")


@dataclass(frozen=True)
class Part:
    """One piece of a rendered prompt, as segcache's tree would key it."""

    kind: str  # one of PART_KINDS
    role: str | None  # chat role for head/segment/message/template/generation parts
    text: str  # exact rendered text; the parts of a request concatenate to its input


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: its rendered input, the reply, and what is known about how it was sent."""

    input: str
    output: str
    parts: tuple[Part, ...]
    part_tokens: tuple[int, ...] | None = None  # tokens per part as the server counted them (segcache log)
    messages: tuple[dict, ...] | None = None  # chat messages as sent, {role, content: str}
    segments: tuple[dict, ...] | None = None  # segcache segments as sent, {id, hash, content}
    endpoint: str | None = None  # "chat.completions" | "completions" when the trace says
    timestamp: float | None = None
    session_id: str | None = None
    tenant: str | None = None  # whose cache scope served it (segcache log)
    model: str | None = None
    served_cached_tokens: int | None = None  # what the server reported as cached (segcache log)

    @property
    def scope(self) -> str:
        """The cache scope the tree metric files this request under: tenants and models never share KV."""
        return f"{self.tenant or ''}\x00{self.model or ''}"

    def __post_init__(self) -> None:
        joined = "".join(part.text for part in self.parts)
        if joined != self.input:
            raise ValueError("the parts of a trace request must concatenate to its input exactly")
        if self.part_tokens is not None and len(self.part_tokens) != len(self.parts):
            raise ValueError("part_tokens needs one count per part")


@dataclass(frozen=True)
class Trace:
    """A trace file read into requests, in the order they were sent."""

    name: str  # the file name, for tables and plots
    requests: tuple[TraceRequest, ...]
    shapes: tuple[str, ...]  # which record shapes the file held: "input-output", "openai-chat", "segcache-log"
