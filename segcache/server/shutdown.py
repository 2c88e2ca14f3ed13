"""A bounded graceful shutdown: on SIGTERM running streams get `--shutdown-grace` seconds to finish,
then end with a final SSE error event (and their engine jobs are cancelled) instead of being cut."""

from __future__ import annotations

import time
from dataclasses import dataclass

from segcache.server.errors import ApiError


@dataclass
class Shutdown:
    deadline: float | None = None  # time.monotonic() after which running requests are cancelled

    def begin(self, grace_s: float) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + grace_s

    def raise_if_overdue(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ApiError(503, "the server is shutting down and this request ran past its grace period; "
                           "retry it (on another instance, or once this one is back)", "server_shutting_down")


def bound_shutdown(server, app, grace_s: float) -> None:
    """Make a uvicorn Server start the grace period of the app's requests on SIGTERM/SIGINT."""
    handle_exit = server.handle_exit

    def start_grace_then_exit(sig, frame) -> None:
        services = getattr(app.state, "services", None)
        if services is not None:
            services.shutdown.begin(grace_s)
        handle_exit(sig, frame)

    server.handle_exit = start_grace_then_exit
