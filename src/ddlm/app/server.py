"""One FastAPI application: the JSON API under /v1, /health, OpenAPI docs at /docs, the web page at /."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ddlm import __version__
from ddlm.app.api import Server, add_error_handlers, api_router
from ddlm.app.limits import Limits
from ddlm.app.service import Models

if TYPE_CHECKING:
    import h11

LOOPBACK = ("127.0.0.1", "localhost", "::1")
IDLE_SECONDS = 5.0  # a connection gets this long to send each request's headers (and to send another)
UNLIMITED_CONNECTIONS = 4096  # the cap where the process may open any number of files


def create_app(models: Models, limits: Limits | None = None, web_page: bool = True) -> FastAPI:
    """The server's ASGI application for ``models`` (``web_page`` False leaves out the Gradio page)."""
    server = Server(models, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.pool.shutdown()

    app = FastAPI(title="ddlm", version=__version__, lifespan=lifespan,
                  description="Generate text with discrete diffusion language models; one event per denoising step "
                              "on /v1/generate/stream.")
    app.state.server = server
    add_error_handlers(app)
    app.include_router(api_router(server))
    if web_page:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
        import gradio as gr

        from ddlm.app.ui import CSS, build_page

        page = build_page(server)
        app = gr.mount_gradio_app(app, page, path="/", css=CSS, footer_links=[])
        calm_queue(page)
    return app


# How often Gradio's queue looks for work while idle: its own Windows values. Its Linux defaults (1 ms and
# 10 ms) wake the event loop about 1,100 times a second, 5% of a core for an idle server.
QUEUE_POLL_SECONDS = 0.05
PROGRESS_POLL_SECONDS = 0.1


def calm_queue(page: Any) -> None:
    """Let an idle page's event queue sleep between polls (no public setting exists in Gradio 6)."""
    queue = getattr(page, "_queue", None)
    if queue is not None:
        queue.sleep_when_free = max(getattr(queue, "sleep_when_free", 0), QUEUE_POLL_SECONDS)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0),
                                                    PROGRESS_POLL_SECONDS)


def serve(models: Models, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None) -> None:
    """Run the server until Ctrl-C."""
    if host not in LOOPBACK:
        print(f"warning: serving on {host}: anyone who can reach this machine can use the server; "
              "use --host 127.0.0.1 to keep it local", file=sys.stderr)
    app = create_app(models, limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(models.names)} at http://{shown}:{port}/ (API docs at /docs); Ctrl-C stops",
          file=sys.stderr)
    uvicorn.run(app, **uvicorn_settings(host, port))


def uvicorn_settings(host: str, port: int) -> dict[str, Any]:
    """The keywords of ``uvicorn.run`` (or ``uvicorn.Config``) for the server: connections that send
    nothing time out and make room for new ones (:class:`GuardedH11Protocol`)."""
    return {"host": host, "port": port, "log_level": "warning", "timeout_graceful_shutdown": 2,
            "timeout_keep_alive": IDLE_SECONDS, "http": GuardedH11Protocol}


def connection_cap() -> int:
    """Open connections allowed: half the process's file descriptors, the rest left for its own files
    and for accepting the next client."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_CONNECTIONS if soft == resource.RLIM_INFINITY else max(soft // 2, 1)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection, guarded against clients that hold connections open and send nothing.

    uvicorn times a connection out only after a response (keep-alive): one that never sends a whole
    request would hold its file descriptor for good, and once enough of them use up the descriptors
    no client is accepted, /health neither. Here each request's headers must arrive within
    ``timeout_keep_alive`` seconds, and a connection beyond :func:`connection_cap` closes the oldest
    idle one to make room.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.opened = time.monotonic()
        self.request_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.await_request()
        if len(self.connections) > connection_cap():
            idle = [other for other in self.connections
                    if other is not self and isinstance(other, GuardedH11Protocol) and other.idle()]
            if idle:
                min(idle, key=lambda other: other.opened).close_if_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.cancel_deadline()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade(event)

    def idle(self) -> bool:
        """Open, and no request in progress: none has come yet, or the last one is answered."""
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

    def await_request(self) -> None:
        """Close the connection unless a request's headers arrive within ``timeout_keep_alive`` seconds."""
        self.cancel_deadline()
        self.request_deadline = self.loop.call_later(self.timeout_keep_alive, self.close_if_idle)

    def cancel_deadline(self) -> None:
        if self.request_deadline is not None:
            self.request_deadline.cancel()

    def close_if_idle(self) -> None:
        if self.idle():
            self.shutdown()
