"""Which server to talk to and with which keys; `--spawn` starts one of our own on loopback."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


from segcache.server.launch import free_port, wait_healthy

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Target:
    """A server URL and the API keys the tools may use, key -> tenant (empty: single tenant, no key)."""

    url: str
    keys: dict[str, str] = field(default_factory=dict)
    admin_key: str | None = None  # reads the server-wide figures (a tenant's key sees only its own)

    def __post_init__(self) -> None:
        require_loopback(self.url)

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.keys.values())) or ["default"]

    def keys_of(self, tenant: str) -> list[str | None]:
        """The keys that map to `tenant`, in a fixed order; [None] when the server has no keys."""
        return sorted(k for k, t in self.keys.items() if t == tenant) or [None]

    def any_key(self) -> str | None:
        return self.keys_of(self.tenants[0])[0]

    def metrics_key(self) -> str | None:
        """The key whose /metrics show the whole server: the admin key, else (single tenant) any key."""
        return self.admin_key or self.any_key()


def headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def require_loopback(url: str) -> None:
    """These tools generate heavy or hostile traffic: they only ever talk to this machine."""
    host = urlsplit(url).hostname
    if host not in _LOOPBACK:
        raise ValueError(f"{url}: only loopback servers (127.0.0.1, localhost, ::1) may be targeted")


def parse_keys(text: str | None) -> dict[str, str]:
    """'key:tenant,key:tenant' -> {key: tenant}; the tenant is after the last ':'."""
    keys: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, tenant = item.strip().rpartition(":")
        if item.strip() and (not sep or not key or not tenant):
            raise ValueError(f"expected 'key:tenant', got {item.strip()!r}")
        if item.strip():
            keys[key] = tenant
    return keys


def generated_keys(tenants: list[str], keys_per_tenant: int) -> dict[str, str]:
    """Fresh random keys, `keys_per_tenant` for each tenant (several keys share a tenant's cache)."""
    return {f"sk-{tenant}-{secrets.token_hex(6)}": tenant for tenant in tenants for _ in range(keys_per_tenant)}


@contextlib.contextmanager
def spawned_server(keys: dict[str, str], model: str, cache_bytes: str, extra_flags: tuple[str, ...] = (),
                   timeout_s: float = 900, log_path: str | None = None) -> Iterator[Target]:
    """Run `python -m segcache serve` with these keys on a free loopback port for the block's duration."""
    with tempfile.TemporaryDirectory(prefix="segcache-reliability-") as tmp:
        key_file = Path(tmp) / "api-keys"
        key_file.write_text("".join(f"{k}:{t}\n" for k, t in keys.items()))
        key_file.chmod(0o600)
        port = free_port()
        log = Path(log_path) if log_path else Path(tmp) / "server.log"
        admin_key = f"sk-admin-{secrets.token_hex(8)}"
        env = {k: v for k, v in os.environ.items() if k != "SEGCACHE_API_KEYS"}  # the file is the only source
        env["SEGCACHE_ADMIN_KEY"] = admin_key
        command = [sys.executable, "-m", "segcache", "serve", "--model", model, "--cache-bytes", cache_bytes,
                   "--api-keys", str(key_file), "--port", str(port), "--log-level", "warning", *extra_flags]
        with open(log, "w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, timeout_s, process, log)
            yield Target(url, dict(keys), admin_key)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
