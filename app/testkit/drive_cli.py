"""``helpdesk-voice drive SCENARIO``: a scripted spoken conversation, judged from outside."""

from __future__ import annotations

import argparse


def drive_main(args: argparse.Namespace) -> int:
    raise NotImplementedError("drive is being built")
