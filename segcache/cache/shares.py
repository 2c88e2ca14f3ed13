"""How the KV budget is divided between scopes (in a server: one scope per tenant).

Why shares: with one global LRU, a tenant that floods new prompts evicts everyone else's warm
segments. With shares, eviction takes from the scope furthest over its share first, so a scope that
stays inside its share is never evicted by another scope's traffic.

    budget 64 MiB, 2 active scopes -> fair share 32 MiB each
    acme   |#########.......|   20 MiB  (12 under)
    globex |################|######   44 MiB  (12 over)  <- evicted first, its own LRU order

Pins are a promise that must outlive newcomers, so a scope may pin only up to its *guaranteed* share
(the fixed share if one is set, else the floor), and never past the budget in total.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FLOOR_DIVISOR = 8  # auto floor: budget / 8, so up to 8 tenants always fit their floor


@dataclass(frozen=True)
class SharePolicy:
    share_bytes: int | None = None  # every scope's share; None = budget / active scopes, at least the floor
    floor_bytes: int | None = None  # smallest fair share; None = capacity_bytes // DEFAULT_FLOOR_DIVISOR
    pin_quota_bytes: int | None = None  # an extra per-scope cap on pinned bytes (None: the guaranteed share)
    lru_only: bool = False  # no shares: one LRU across scopes; pins are then capped by the quota and budget only

    def __post_init__(self) -> None:
        for name in ("share_bytes", "floor_bytes", "pin_quota_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def floor(self, capacity_bytes: int) -> int:
        return self.floor_bytes if self.floor_bytes is not None else capacity_bytes // DEFAULT_FLOOR_DIVISOR

    def share(self, capacity_bytes: int, num_active: int) -> int:
        """A scope's share of `capacity_bytes` when `num_active` scopes hold bytes (the asker among them)."""
        if self.share_bytes is not None:
            return self.share_bytes
        return max(self.floor(capacity_bytes), capacity_bytes // max(1, num_active))

    def pin_limit(self, capacity_bytes: int) -> int:
        """Bytes one scope may pin whatever other scopes do: its guaranteed share, capped by the quota."""
        guaranteed = self.share_bytes if self.share_bytes is not None else self.floor(capacity_bytes)
        guaranteed = capacity_bytes if self.lru_only else min(guaranteed, capacity_bytes)
        return guaranteed if self.pin_quota_bytes is None else min(guaranteed, self.pin_quota_bytes)
