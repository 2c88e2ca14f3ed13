"""API keys -> tenants. Keys that map to one tenant share its cache; tenants never share anything."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from segcache.server.errors import ApiError

SINGLE_TENANT = "default"


@dataclass(frozen=True)
class KeyMap:
    keys: dict[str, str]          # api key -> tenant; empty = single-tenant, any key accepted
    admin_key: str | None = None  # reads server-wide figures; is no tenant's key

    @classmethod
    def load(cls, path: str | None, env: str | None = None, admin_key: str | None = None) -> "KeyMap":
        """From --api-keys FILE (lines 'key:tenant', '#' comments) and/or SEGCACHE_API_KEYS=key:tenant,...;
        the admin key from --admin-key or SEGCACHE_ADMIN_KEY."""
        keys: dict[str, str] = {}
        if path:
            lines = Path(path).read_text().splitlines()
            keys.update(_parse(line, f"{path}:{n}") for n, line in enumerate(lines, 1)
                        if line.strip() and not line.lstrip().startswith("#"))
        env = os.environ.get("SEGCACHE_API_KEYS") if env is None else env
        if env:
            keys.update(_parse(item, "SEGCACHE_API_KEYS") for item in env.split(",") if item.strip())
        admin_key = admin_key or os.environ.get("SEGCACHE_ADMIN_KEY") or None
        if admin_key is not None and admin_key in keys:
            raise ValueError("the admin key must not also be a tenant's API key")
        return cls(keys, admin_key)

    def is_admin(self, authorization: str | None) -> bool:
        token = _bearer(authorization)
        return (self.admin_key is not None and token is not None
                and hmac.compare_digest(self.admin_key.encode(), token.encode()))

    @property
    def multi_tenant(self) -> bool:
        return bool(self.keys)

    @property
    def tenants(self) -> set[str]:
        return set(self.keys.values())

    def tenant_for(self, authorization: str | None) -> str:
        if not self.keys:
            return SINGLE_TENANT
        token = _bearer(authorization)
        if token is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        for key, tenant in self.keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return tenant
        raise ApiError(401, "invalid API key: check the key you were given for this server", "invalid_api_key")


def _parse(item: str, where: str) -> tuple[str, str]:
    key, sep, tenant = item.strip().rpartition(":")
    if not sep or not key or not tenant.strip():
        raise ValueError(f"{where}: expected 'key:tenant', got {item.strip()!r}")
    return key.strip(), tenant.strip()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
