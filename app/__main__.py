"""``python -m app`` is the same as ``helpdesk-voice``."""

import sys

from app.cli import main

sys.exit(main())
