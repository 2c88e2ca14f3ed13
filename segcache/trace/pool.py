"""Token keys for the prefix and substring metrics, and the LRU pool that holds them.

Each pooled key stands for one token of cached context:
- prefix key j of a sequence names its first j+1 tokens (a node of a radix tree of token ids);
- gram key j names tokens j..j+3 wherever they occur (what a position-independent cache could match).
Both are computed with numpy in one pass per sequence, so a trace costs O(tokens), never O(tokens^2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

GRAM = 4  # tokens per substring chunk
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so every power is odd and no token's term can vanish
_MIX = np.uint64(0xBF58476D1CE4E5B9)


class PrefixHasher:
    """prefix_keys(ids)[j] = sum over i <= j of (ids[i] + 1) * BASE**i, mod 2**64.

    Equal prefixes get equal keys whatever follows them, and consecutive prefixes of one sequence
    always differ; two different token prefixes collide with probability about 2**-64.
    """

    def __init__(self) -> None:
        self._powers = np.ones(1, dtype=np.uint64)

    def prefix_keys(self, ids: np.ndarray) -> np.ndarray:
        powers = self._powers_upto(len(ids))
        return np.cumsum((ids.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64)

    def _powers_upto(self, length: int) -> np.ndarray:
        if len(self._powers) < length:
            size = max(length, 2 * len(self._powers))
            steps = np.full(size, _BASE, dtype=np.uint64)
            steps[0] = 1
            self._powers = np.cumprod(steps, dtype=np.uint64)  # wraps mod 2**64, as intended
        return self._powers[:length]


def gram_keys(ids: np.ndarray, exact: bool) -> np.ndarray:
    """Key of every GRAM-token window: (n - 3,) uint64.

    exact=True packs four 16-bit ids into 64 bits (no collisions; needs ids < 65536, as for the default
    model's 49,152-token vocabulary); otherwise the ids are mixed into one 64-bit hash.
    """
    if len(ids) < GRAM:
        return np.zeros(0, dtype=np.uint64)
    ids = ids.astype(np.uint64)
    windows = [ids[i: len(ids) - GRAM + 1 + i] for i in range(GRAM)]
    if exact:
        return (windows[0] << np.uint64(48)) | (windows[1] << np.uint64(32)) | (windows[2] << np.uint64(16)) | windows[3]
    key = np.zeros(len(windows[0]), dtype=np.uint64)
    for window in windows:
        key = (key ^ window) * _MIX
        key ^= key >> np.uint64(31)
    return key


class LruPool:
    """A set of keys (one token each) that forgets the least recently touched once past `capacity`.

    capacity None is the unlimited pool of the published metrics: a plain set, and the fastest path.
    """

    def __init__(self, capacity: int | None = None):
        if capacity is not None and capacity < 0:
            raise ValueError("a pool size must be a non-negative number of tokens")
        self.capacity = capacity
        self._keys: set[int] | OrderedDict[int, None] = set() if capacity is None else OrderedDict()

    def __contains__(self, key: int) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def touch(self, keys: Iterable[int]) -> None:
        """Add or refresh keys, later ones more recent; then evict down to capacity."""
        if isinstance(self._keys, set):
            self._keys.update(keys)
            return
        pool = self._keys
        for key in keys:
            if key in pool:
                pool.move_to_end(key)
            else:
                pool[key] = None
        while len(pool) > self.capacity:  # type: ignore[operator]
            pool.popitem(last=False)
