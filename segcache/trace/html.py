"""A self-contained HTML report: per trace the figures and plot, then every request with its reused
spans highlighted (tree-reused, prefix-reused, substring chunks), the reused prefix folded away.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from segcache.trace.metrics import RequestHits
from segcache.trace.pool import GRAM
from segcache.trace.records import Trace
from segcache.trace.report import TraceReport
from segcache.trace.tokens import TokenizedRequest

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
pre { white-space: pre-wrap; word-break: break-word; background: #f8f9fa; padding: .5em; margin: .3em 0; }
.tree { background: #b2f2bb; } .prefix { background: #d3f9d8; } .substring { background: #ffe8cc; }
.request { border-top: 1px solid #ddd; padding-top: .4em; } summary { cursor: pointer; color: #555; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: right; border-bottom: 1px solid #eee; }
"""


@dataclass(frozen=True)
class TraceSection:
    trace: Trace
    tokenized: Sequence[TokenizedRequest]
    report: TraceReport
    png: bytes | None


def render_html(sections: Sequence[TraceSection]) -> str:
    body = "".join(_section(s) for s in sections)
    legend = ('<p>Legend: <span class="tree">reused by the segment tree</span> '
              '<span class="prefix">reused as a prefix only</span> '
              '<span class="substring">4-token chunk found elsewhere in earlier requests</span></p>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>segcache trace analysis</title>"
            f"<style>{_STYLE}</style></head><body><h1>segcache trace analysis</h1>{legend}{body}</body></html>")


def _section(section: TraceSection) -> str:
    a = section.report.unlimited
    summary = "".join(f"<tr><th>{m}</th><td>{a.hit_tokens(m):,}</td><td>{100 * a.hit_rate(m):.1f}%</td></tr>"
                      for m in ("prefix", "substring", "tree"))
    image = (f"<img alt='hit curves' src='data:image/png;base64,{base64.b64encode(section.png).decode()}'>"
             if section.png else "")
    requests = "".join(_request(i, r, t, h) for i, (r, t, h)
                       in enumerate(zip(section.trace.requests, section.tokenized, a.requests)))
    return (f"<h2>{escape(a.name)}</h2><p>{len(a.requests):,} requests, {a.input_tokens:,} input tokens</p>"
            f"<table><tr><th></th><th>hit tokens</th><th>rate</th></tr>{summary}</table>{image}{requests}")


def _request(index: int, request, tokens: TokenizedRequest, hits: RequestHits) -> str:
    text = request.input
    def at(token: int) -> int:  # character where token `token` starts (the end of the text past the last)
        return int(tokens.starts[token]) if token < len(tokens.starts) else len(text)
    tree_end, prefix_end = at(min(hits.tree, hits.prefix)), at(hits.prefix)
    head = (f"<h3>#{index + 1}: {hits.input_tokens:,} input tokens; prefix {hits.prefix:,}, "
            f"substring {hits.substring:,}, tree {hits.tree:,}</h3>")
    folded = ""
    if prefix_end:
        folded = (f"<details><summary>{hits.prefix:,} tokens reused as a prefix (tree: {hits.tree:,})</summary>"
                  f"<pre>{_span(text[:tree_end], 'tree')}{_span(text[tree_end:prefix_end], 'prefix')}</pre></details>")
    chunks = [(max(at(GRAM * k), prefix_end), at(GRAM * k + GRAM)) for k in hits.chunk_hits.nonzero()[0]]
    rest = _highlight(text, prefix_end, [(a, b) for a, b in chunks if b > a])
    output = f"<details><summary>output</summary><pre>{escape(request.output)}</pre></details>" if request.output else ""
    return f"<div class='request'>{head}{folded}<pre>{rest}</pre>{output}</div>"


def _highlight(text: str, begin: int, spans: list[tuple[int, int]]) -> str:
    """Text from `begin` on with the (sorted) spans marked as substring hits, touching spans merged."""
    out, position = [], begin
    for start, end in _merge(spans):
        out += [escape(text[position:start]), _span(text[start:end], "substring")]
        position = end
    out.append(escape(text[position:]))
    return "".join(out)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _span(text: str, css: str) -> str:
    return f"<span class='{css}'>{escape(text)}</span>" if text else ""
