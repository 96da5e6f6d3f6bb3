"""Text from outside (a server, a close frame, an HTTP body) made safe to show.

A server's words end up on a terminal, in a log file and in a desktop notification. Control
characters there are not text: an escape sequence can rewrite the terminal or hide a line, a
carriage return can overwrite what came before, and bidirectional overrides can make a line read
differently from what it holds. :func:`printable` removes them, keeping tabs and line breaks.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["one_line", "printable"]

# C0 controls but tab and line feed, DEL, C1 controls, and the bidirectional embeddings, overrides
# and isolates (U+202A-U+202E, U+2066-U+2069).
_UNSAFE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` without control characters other than tab and line feed."""
    if _UNSAFE.search(text) is None:  # the common case costs one scan, no copy
        return text
    return _UNSAFE.sub("", text)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as one printable line of at most ``limit`` characters, for a notice or a log line."""
    line = " ".join(printable(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
