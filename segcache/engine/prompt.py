"""Prompt assembly: render the chat template, cut the text into parts, tokenize once, jointly.

A chat prompt becomes parts like this (ChatML shown; any prefix-stable template works):

    <|im_start|>system\n | A | \n\nB | \n\n<system message> | <|im_end|>\n | <|im_start|>user\n...<|im_end|>\n | <|im_start|>assistant\n
    head                 seg  seg     message               template      message                            generation

Each token belongs to the part in which it ends, so the ids fed to the model are exactly those of
one tokenization of the whole text, whatever the cache holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segcache.cache.keys import PartKey, part_key

SEGMENT_SEPARATOR = "\n\n"


class PromptError(ValueError):
    """A prompt the server cannot build; `code` is the OpenAI-style error code."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.code, self.param, self.status = code, param, status


@dataclass(frozen=True)
class SegmentText:
    content: str
    id: str | None = None
    hash: str | None = None


@dataclass
class Part:
    kind: str                  # head | segment | message | template | generation | prompt
    role: str | None
    text: str
    label: str | None = None   # the segment id, for receipts
    segment_index: int | None = None
    token_ids: tuple[int, ...] = ()
    key: PartKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = part_key(self.kind, self.role or "", self.text)


@dataclass(frozen=True)
class Prompt:
    parts: list[Part]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)

    @property
    def token_ids(self) -> list[int]:
        return [t for p in self.parts for t in p.token_ids]


def build_chat_prompt(tokenizer, segments: list[SegmentText], messages: list[dict],
                      add_generation_prompt: bool = True, reject_split: bool = False) -> Prompt:
    """Segments go first, inside the single system turn; a system message from `messages` follows them."""
    parts: list[Part] = []
    conversation = list(messages)
    if segments:
        system = _system_messages(segments, messages)
        parts = _system_turn_parts(_render(tokenizer, system, False), segments, messages)
        conversation = system + (messages[1:] if messages and messages[0]["role"] == "system" else messages)
    parts += _message_parts(tokenizer, conversation, 1 if segments else 0, add_generation_prompt)
    if not segments:
        parts = _split_injected_turn(tokenizer, conversation, parts)
    return _tokenize(tokenizer, [p for p in parts if p.text], reject_split)


def build_completion_prompt(tokenizer, segments: list[SegmentText], prompt: str, reject_split: bool = False) -> Prompt:
    """Raw completions: segments verbatim, then the prompt; no template, no separator."""
    parts = [Part("segment", None, s.content, label=s.id, segment_index=i) for i, s in enumerate(segments)]
    parts.append(Part("prompt", None, prompt))
    return _tokenize(tokenizer, [p for p in parts if p.text], reject_split, add_special_tokens=True)


# ---------------------------------------------------------------- rendering


def _system_messages(segments: list[SegmentText], messages: list[dict]) -> list[dict]:
    """The system turn as the template sees it: segments, then any system message, one content."""
    contents = [s.content for s in segments]
    if messages and messages[0]["role"] == "system":
        contents.append(messages[0]["content"])
    return [{"role": "system", "content": SEGMENT_SEPARATOR.join(contents)}]


def _system_turn_parts(rendered: str, segments: list[SegmentText], messages: list[dict]) -> list[Part]:
    content = SEGMENT_SEPARATOR.join([s.content for s in segments] + (
        [messages[0]["content"]] if messages and messages[0]["role"] == "system" else []))
    offset = rendered.find(content)
    if offset < 0:
        raise PromptError("this model's chat template rewrites the system message, so segments cannot be "
                          "cached separately; send the blocks as a system message instead", "template_unsupported")
    parts = [Part("head", "system", rendered[:offset])]
    for i, segment in enumerate(segments):
        sep = SEGMENT_SEPARATOR if i else ""
        parts.append(Part("segment", "system", sep + segment.content, label=segment.id, segment_index=i))
    if messages and messages[0]["role"] == "system":
        parts.append(Part("message", "system", SEGMENT_SEPARATOR + messages[0]["content"]))
    parts.append(Part("template", "system", rendered[offset + len(content):]))
    return parts


def _split_injected_turn(tokenizer, conversation: list[dict], parts: list[Part]) -> list[Part]:
    """Make a system turn the template adds on its own (SmolLM2 adds a default one) a part of its own, so
    two chats that differ only in their first user message share it.

        <|im_start|>system\nYou are a helpful AI ...<|im_end|>\n | <|im_start|>user\nCount to 0.<|im_end|>\n
        template (system)                                         message (user)
    """
    if not conversation or not parts or conversation[0]["role"] == "system" or parts[0].role != conversation[0]["role"]:
        return parts
    injected = _injected_turn(tokenizer, conversation[0]["role"])
    if not injected or not parts[0].text.startswith(injected) or parts[0].text == injected:
        return parts
    first = parts[0]
    return [Part("template", "system", injected), Part(first.kind, first.role, first.text[len(injected):]), *parts[1:]]


def _injected_turn(tokenizer, role: str) -> str | None:
    """The text a template puts before a first `role` message's own turn (None if there is none or the
    template is not prefix-stable enough to tell): what comes before the turn's opening, learned by
    rendering the same turn after an explicit system message."""
    mark = _MARK.format("turn")
    system = [{"role": "system", "content": "x"}]
    alone, after_system = _render(tokenizer, system, False), _render(tokenizer, system + [{"role": role, "content": mark}], False)
    if not after_system.startswith(alone) or mark not in after_system:
        return None
    opening = after_system[len(alone):after_system.index(mark)]
    rendered = _render(tokenizer, [{"role": role, "content": mark}], False)
    before = rendered[:rendered.find(mark)] if mark in rendered else ""
    if not opening or not before.endswith(opening) or len(before) == len(opening):
        return None
    return before[:-len(opening)]


def _message_parts(tokenizer, conversation: list[dict], start: int, add_generation_prompt: bool) -> list[Part]:
    """One part per message from `start` on, cut where rendering the first i messages ends.

    Needs a prefix-stable template (ChatML and most others are); a template that rewrites earlier
    turns gets one part for the whole conversation, which is still correct, only less reusable.
    Linear in the number of messages (see _cuts); the prefix-by-prefix way is the fallback.
    """
    full = _render(tokenizer, conversation, False)
    cuts = _cuts(tokenizer, conversation, start, full)
    if cuts is None:
        return _message_parts_by_prefixes(tokenizer, conversation, start, add_generation_prompt)
    parts = [Part("message", conversation[i]["role"], full[cuts[i - start]:cuts[i - start + 1]])
             for i in range(start, len(conversation))]
    if add_generation_prompt:
        text = _render(tokenizer, conversation, True)
        if not text.startswith(full):
            return _unsplittable(tokenizer, conversation, start, add_generation_prompt)
        parts.append(Part("generation", "assistant", text[len(full):]))
    return parts


def _cuts(tokenizer, conversation: list[dict], start: int, full: str) -> list[int] | None:
    """Where rendering conversation[:i] ends in `full`, for i = start..len: with a few renders, not one per message.

    Render once with a marker after each message's content to find where each content ends; the text a
    template closes a message with depends only on its role, so render up to the first message of each
    role to learn it. None if any assumption fails (the caller then renders prefix by prefix).

        full:  <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n
                                  ^ content end    ^ cut = content end + the role's closing text
    """
    ends = _content_ends(tokenizer, conversation, start, full)
    if ends is None:
        return None
    closings: dict[str, str] = {}
    cuts = [len(_render(tokenizer, conversation[:start], False)) if start else 0]
    for i in range(start, len(conversation)):
        role = conversation[i]["role"]
        if role not in closings:
            prefix = _render(tokenizer, conversation[:i + 1], False)
            if not full.startswith(prefix) or len(prefix) < ends[i - start]:
                return None
            closings[role] = prefix[ends[i - start]:]
        cut = ends[i - start] + len(closings[role])
        if full[ends[i - start]:cut] != closings[role] or cut < cuts[-1]:
            return None
        cuts.append(cut)
    return cuts if cuts[-1] == len(full) else None


_MARK = "\x00segcache-cut-{}\x00"


def _content_ends(tokenizer, conversation: list[dict], start: int, full: str) -> list[int] | None:
    """For each message from `start` on, where its content ends in `full`; None if the template does
    not carry a marker through untouched (or a message already contains one)."""
    if any(_MARK.split("{")[0] in str(m.get("content")) for m in conversation):
        return None
    marks = [_MARK.format(i) for i in range(len(conversation))]
    marked = [{**m, "content": m["content"] + marks[i]} if i >= start and isinstance(m.get("content"), str) else m
              for i, m in enumerate(conversation)]
    text = _render(tokenizer, marked, False)
    ends, pieces, position, unmarked_len = [], [], 0, 0
    for i in range(start, len(conversation)):
        found = text.find(marks[i], position)
        if found < 0:
            return None
        pieces.append(text[position:found])
        unmarked_len += found - position
        ends.append(unmarked_len)
        position = found + len(marks[i])
    pieces.append(text[position:])
    return ends if "".join(pieces) == full else None


def _message_parts_by_prefixes(tokenizer, conversation: list[dict], start: int,
                               add_generation_prompt: bool) -> list[Part]:
    """The reference cut: render the first i messages for every i (quadratic; the fallback)."""
    done = _render(tokenizer, conversation[:start], False) if start else ""
    parts: list[Part] = []
    for i in range(start, len(conversation)):
        text = _render(tokenizer, conversation[: i + 1], False)
        if not text.startswith(done):
            return _unsplittable(tokenizer, conversation, start, add_generation_prompt)
        parts.append(Part("message", conversation[i]["role"], text[len(done):]))
        done = text
    if add_generation_prompt:
        text = _render(tokenizer, conversation, True)
        if not text.startswith(done):
            return _unsplittable(tokenizer, conversation, start, add_generation_prompt)
        parts.append(Part("generation", "assistant", text[len(done):]))
    return parts


def _unsplittable(tokenizer, conversation: list[dict], start: int, add_generation_prompt: bool) -> list[Part]:
    before = _render(tokenizer, conversation[:start], False) if start else ""
    text = _render(tokenizer, conversation, add_generation_prompt)
    return [Part("message", None, text[len(before):])]


def _render(tokenizer, conversation: list[dict], add_generation_prompt: bool) -> str:
    if not conversation:
        return ""
    try:
        return tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError for e.g. roles the template refuses
        raise PromptError(f"the chat template rejected these messages: {exc}", "invalid_messages",
                          param="messages") from exc


# ---------------------------------------------------------------- tokens


def _tokenize(tokenizer, parts: list[Part], reject_split: bool, add_special_tokens: bool = False) -> Prompt:
    """Tokenize the joined text once; give each token to the part in which it ends.

        text:    |--- part 0 ---|---- part 1 ----|
        tokens:  [t0][t1][t2 ][t3  ][t4][t5]        t3 straddles the seam: it ends in part 1
    """
    text = "".join(p.text for p in parts)
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ends, position = [], 0
    for part in parts:
        position += len(part.text)
        ends.append(position)
    owned: list[list[int]] = [[] for _ in parts]
    index = 0
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        last_char = max(end - 1, start)
        while index < len(parts) - 1 and last_char >= ends[index]:
            index += 1
        owned[index].append(token_id)
        if reject_split and index > 0 and start < ends[index - 1] and parts[index - 1].kind == "segment":
            _reject(parts[index - 1])
    for part, ids in zip(parts, owned):
        part.token_ids = tuple(ids)
    return Prompt(parts)


def _reject(part: Part) -> None:
    name = part.label or f"#{part.segment_index}"
    raise PromptError(f"segment {name!r} does not end on a token boundary: its last characters merge with "
                      "what follows into one token. Move trailing spaces to the start of what follows, end the "
                      "segment with punctuation or a newline, or send segment_boundary='reprocess'", "segment_boundary_split", param="segments")
