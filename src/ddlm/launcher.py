"""The ``ddlm`` command's entry point: a Ctrl-C while the heavy modules (torch, ...) load is one line.

``ddlm`` itself imports nothing heavy (``DiffusionPipeline`` loads on first use), so this
module is in place within milliseconds of the start.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def main() -> int:
    try:
        from ddlm.cli import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run()


if __name__ == "__main__":
    sys.exit(main())
