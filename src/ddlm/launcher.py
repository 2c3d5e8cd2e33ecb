"""The ``ddlm`` command's entry point: a Ctrl-C while the heavy modules (torch, ...) load is one line.

``ddlm`` and ``ddlm.cli`` import nothing heavy (``DiffusionPipeline`` loads on first use, a command's
flags when it is chosen), so this module is in place within milliseconds of the start and
``ddlm --version`` and ``ddlm --help`` answer without torch.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def main() -> int:
    try:
        from ddlm.cli import main as run

        return run()  # a command's flags may load torch before its own Ctrl-C handling starts
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
