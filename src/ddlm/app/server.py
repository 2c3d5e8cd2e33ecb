"""One FastAPI application: the JSON API under /v1, /health, OpenAPI docs at /docs, the web page at /."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ddlm import __version__
from ddlm.app.api import Server, add_error_handlers, api_router
from ddlm.app.limits import Limits
from ddlm.app.service import Models

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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

        app = gr.mount_gradio_app(app, build_page(server), path="/", css=CSS, footer_links=[])
    return app


def serve(models: Models, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None) -> None:
    """Run the server until Ctrl-C."""
    import uvicorn

    if host not in LOOPBACK:
        print(f"warning: serving on {host}: anyone who can reach this machine can use the server; "
              "use --host 127.0.0.1 to keep it local", file=sys.stderr)
    app = create_app(models, limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(models.names)} at http://{shown}:{port}/ (API docs at /docs); Ctrl-C stops",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
