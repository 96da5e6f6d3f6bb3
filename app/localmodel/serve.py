"""``helpdesk-voice serve``: the embedded offline realtime server as a process of its own.

It prints its loading steps, then ``url: ...``, ``token: ...`` and ``ready`` on stdout (the app's
launcher reads these lines), and runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from app.localmodel.components import Components
from app.localmodel.launcher import READY_LINE, TOKEN_ENV, URL_PREFIX, die_with_parent
from app.localmodel.server import EmbeddedServer, new_token


def _say(line: str) -> None:
    print(line, flush=True)


def load_components(progress: Callable[[str], None]) -> Components:
    from app.localmodel.models import load_models

    return load_models(progress)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_main(host: str, port: int, token: str | None, watch_stdin: bool) -> int:
    die_with_parent(watch_stdin)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s", force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    token = token or os.environ.get(TOKEN_ENV) or new_token()
    if not is_loopback(host):
        print(
            f"helpdesk-voice: warning: listening on {host}, reachable from other machines; "
            "anyone with the token can use it",
            file=sys.stderr,
            flush=True,
        )
    _say("helpdesk-voice embedded server")
    started = time.monotonic()
    components = load_components(_say)
    _say(f"loaded in {time.monotonic() - started:.1f} s")
    return asyncio.run(_serve(EmbeddedServer(components, token, host, port)))


async def _serve(server: EmbeddedServer) -> int:
    try:
        await server.start()
    except OSError as exc:
        where = f"{server.host}:{server.port}"
        print(f"helpdesk-voice: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still raises KeyboardInterrupt
            loop.add_signal_handler(signum, stop.set)
    _say(f"{URL_PREFIX}{server.url}")
    _say(f"token: {server.token}")
    _say(READY_LINE)
    await stop.wait()
    await server.close()
    return 0
