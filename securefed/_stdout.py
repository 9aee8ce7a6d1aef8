"""Writing a command's output so that a reader that goes away early (``securefed status | head``) ends it quietly.

Imports only the standard library: ``securefed status`` uses it and must stay fast.
"""

from __future__ import annotations

import os
import sys

__all__ = ["write_stdout"]


def write_stdout(text: str) -> None:
    """Write ``text`` to standard output; a closed pipe is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's own flush at exit does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
