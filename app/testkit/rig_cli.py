"""``helpdesk-voice rig up|down|status``: private virtual audio devices for testers."""

from __future__ import annotations

import argparse


def rig_main(args: argparse.Namespace) -> int:
    raise NotImplementedError("rig is being built")
