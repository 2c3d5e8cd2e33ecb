"""``ddlm serve``: the web page and the HTTP API, in one FastAPI process over ``DiffusionPipeline.stream``.

Needs the ``app`` extra (``pip install 'ddlm[app]'``); :func:`require_app_extra` says so in one line.
"""

from __future__ import annotations

import importlib.util

from ddlm.errors import DDLMError

APP_PACKAGES = ("fastapi", "uvicorn", "gradio")


def require_app_extra() -> None:
    """Raise a one-line DDLMError when a package of the ``app`` extra is missing."""
    missing = [name for name in APP_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise DDLMError(f"ddlm serve needs {', '.join(missing)}; install the web app's extra: pip install 'ddlm[app]'")
