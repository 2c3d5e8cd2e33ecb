"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class DDLMError(Exception):
    """An error caused by the user's input or files, shown as one line without a traceback.

    ``field``: the option or request field at fault, where there is one (the API and the web page
    point at it).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
