"""How much of an assistant's words the user heard, from how much of its audio played.

Shared by the app's conversation (what goes back into its history after an interruption) and the
embedded server (what a truncated assistant item keeps): pure, text and milliseconds in, text out.
"""

from __future__ import annotations

import re

__all__ = ["cut_transcript"]


def cut_transcript(text: str, heard_ms: float | None, audio_ms: float, audio_complete: bool) -> str:
    """The part of ``text`` the user heard, estimated from the share of the audio that played.

    The transcript usually runs ahead of the audio; when the audio is complete its share is exact
    enough, and when it is not, the share of what had arrived is the best estimate there is. The cut
    lands on a word boundary and is marked with an ellipsis.
    """
    if heard_ms is None or not text:
        return text
    if audio_ms <= 0 or heard_ms <= 0:
        return ""
    share = min(1.0, heard_ms / audio_ms)
    if share >= 0.999 and audio_complete:
        return text
    position = int(len(text) * share)
    cut = text[:position]
    if position < len(text) and not text[position].isspace():
        cut = re.sub(r"\S*$", "", cut)
    cut = cut.rstrip(" ,;:-")
    return f"{cut}..." if cut else ""
