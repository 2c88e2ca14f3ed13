"""ASCII drawing of one scope's tree, for `GET /v1/cache?format=text`.

    scope 3f2a1b9c0d4e  nodes=2  bytes=3.0KiB  pinned=1.0KiB
    `-- global-rules  tokens=120 [0,120)  bytes=1.0KiB  hits=2  locks=0  pinned  ttl=59.5s
        `-- 9f8e7d6c  tokens=30 [120,150)  bytes=2.0KiB  hits=0  locks=1  ttl=never
"""

from __future__ import annotations

from segcache.cache.keys import ScopeKey
from segcache.cache.node import Node, ScopeTotals


def render_scope(scope: ScopeKey, root: Node | None, totals: ScopeTotals, now: float) -> str:
    header = (f"scope {scope[:12]}  nodes={totals.num_nodes}  bytes={format_bytes(totals.num_bytes)}  "
              f"pinned={format_bytes(totals.pinned_bytes)}")
    if root is None or not root.children:
        return header + "\n(empty)\n"
    lines = [header]
    stack = [(child, "", index == 0) for index, child in enumerate(reversed(root.children.values()))]
    while stack:
        node, indent, is_last = stack.pop()
        lines.append(indent + ("`-- " if is_last else "+-- ") + describe(node, now))
        below = indent + ("    " if is_last else "|   ")
        stack.extend((child, below, index == 0) for index, child in enumerate(reversed(node.children.values())))
    return "\n".join(lines) + "\n"


def describe(node: Node, now: float) -> str:
    """One line about a node: name, token span, bytes, hits, locks, pin, ttl left."""
    fields = [node.name, f"tokens={len(node.token_ids)} [{node.start},{node.end})",
              f"bytes={format_bytes(node.num_bytes)}", f"hits={node.hits}", f"locks={node.lock_count}"]
    if node.pinned:
        fields.append("pinned")
    fields.append("ttl=" + _ttl_left(node, now))
    return "  ".join(fields)


def format_bytes(num_bytes: int) -> str:
    """1536 -> '1.5KiB'; below 1 KiB, plain bytes."""
    if num_bytes < 1024:
        return f"{num_bytes}B"
    value = float(num_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")


def _ttl_left(node: Node, now: float) -> str:
    if node.expires_at is None:
        return "never"
    if node.is_expired(now):
        return "expired"
    return f"{node.expires_at - now:.1f}s"
