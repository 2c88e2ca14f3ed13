"""One request inside the engine: its prompt, where its prefill stands, its KV buffer and its decoder.

    waiting --admit--> prefilling --last unit--> decoding --done/cancelled--> finished
                           |  (one unit per engine step)   (one token per engine step)
                           +-- warm requests finish here
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from segcache.cache.tree import Node
from segcache.engine.blocks import Block, plan_blocks
from segcache.engine.cache_manager import Acquired
from segcache.engine.constraint import Constraint
from segcache.engine.decoding import Decoder
from segcache.engine.prompt import Prompt
from segcache.engine.request import EngineRequest
from segcache.engine.runner import PrefillState

Emit = Callable[[object], None]


@dataclass
class PrefillProgress:
    """A sequence's prefill between engine steps: the blocks left and the cached chain it holds."""
    acquired: Acquired
    blocks: list[Block]                    # every block of the prompt (engine/blocks.py)
    units: deque[Block]                    # the blocks left to compute, in order
    held: list[Node]                       # locked nodes: the matched chain, then each block it cached
    parent: Node                           # where the next computed block is cached
    caching: bool                          # False once a block could not be cached (scope cleared)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Sequence:
    request: EngineRequest
    prompt: Prompt
    emit: Emit
    kv_bytes: int                          # the KV buffer it holds while running (admission budget)
    queued_at: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    prefill: PrefillProgress | None = None
    state: PrefillState | None = None
    decoder: Decoder | None = None
    constraint: Constraint | None = None   # the reply's grammar (JSON schema, tool calls), if any
    _blocks: list[Block] | None = field(default=None, repr=False)

    def blocks(self, block_tokens: int) -> list[Block]:
        """The prompt's blocks (engine/blocks.py `plan_blocks`), planned once: whether it may join a step's
        forward and its prefill both read them."""
        if self._blocks is None:
            self._blocks = plan_blocks(self.prompt.parts, block_tokens)
        return self._blocks

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def generates(self) -> bool:
        return self.request.kind != "warm"
