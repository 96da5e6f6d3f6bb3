"""``helpdesk-voice-token-service``: run the token service, or register a new device.

``helpdesk-voice-token-service`` serves on the configured host and port;
``helpdesk-voice-token-service new-device NAME`` prints a fresh credential for that laptop (to put in
its keyring) and the line for the allow-list (only the hash, which is all the service keeps).
"""

from __future__ import annotations

import argparse
import logging
import sys

from app.token_service.service import (
    TokenServiceConfigError,
    create_app,
    hash_credential,
    load_config,
    new_credential,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helpdesk-voice-token-service", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    device = commands.add_parser("new-device", help="make a credential for one laptop")
    device.add_argument("name", help="a name for the laptop, as the service's log will show it")
    args = parser.parse_args(argv)
    if args.command == "new-device":
        credential = new_credential()
        print(
            f"credential for {args.name} (store it in that laptop's keyring, helpdesk-voice / token_service):"
        )
        print(f"  {credential}")
        print("line for [devices] in the token service's configuration:")
        print(f'  "{args.name}" = "{hash_credential(credential)}"')
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config()
    except TokenServiceConfigError as exc:
        print(f"helpdesk-voice-token-service: {exc}", file=sys.stderr)
        return 2
    import uvicorn  # late: new-device works without the server packages

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
