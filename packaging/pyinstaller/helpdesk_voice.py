"""The frozen bundle's entry point: the same command line as ``helpdesk-voice`` from pip."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
