"""User-facing errors: one line that names the problem and the fix."""


class DDLMError(Exception):
    """An error caused by the user's input or files, shown as one line without a traceback."""
