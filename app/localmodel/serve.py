"""``helpdesk-voice serve``: the embedded offline realtime server as a process of its own.

It prints its loading steps, then ``url: ...``, ``token: ...`` and ``ready`` on stdout (the app's
launcher reads these lines), and runs until SIGTERM or Ctrl-C.

The token comes from ``HELPDESK_VOICE_SERVER_TOKEN`` (how the app's launcher passes it) or the first
line of stdin (``--token-stdin``), never from the command line, where every user of the computer
can read it; without one a random token is made and printed. Beyond loopback the server needs a
certificate and key (``--tls-cert``/``--tls-key``) and serves ``wss://``; plain ``ws://`` there is
refused before any model loads.

The company's article folders (``kb.folders``) come from ``HELPDESK_VOICE_SERVER_KB_FOLDERS`` (a
JSON list of paths, or paths separated by os.pathsep; how the app's launcher passes them), else
from the settings (policy, user file, ``HELPDESK_VOICE_KB_FOLDERS``), which the command line reads
and hands to :func:`serve_main`. They are read at start-up: a server started after a
folder changed embeds just the changed articles (the vector cache is kept per folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence

from app.localmodel.components import Components
from app.localmodel.launcher import READY_LINE, TOKEN_ENV, URL_PREFIX, die_with_parent
from app.localmodel.server import (
    EmbeddedServer,
    ServerSetupError,
    check_address,
    give_back_memory,
    limit_malloc_arenas,
    new_token,
)
from app.realtime.endpoint import is_loopback_host
from app.tools.kb_sources import KB_FOLDERS_ENV, folders_to_env

EXIT_USAGE = 2
# Two arenas: the speech workers then share their freed memory instead of each keeping its own.
MALLOC_ARENAS = 2


def _say(line: str) -> None:
    print(line, flush=True)


def _refuse(message: str) -> int:
    print(f"helpdesk-voice: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def load_components(progress: Callable[[str], None]) -> Components:
    from app.localmodel.models import load_models

    return load_models(progress)


def read_token(from_stdin: bool) -> tuple[str, str]:
    """The token and where it came from: stdin when asked, else the environment, else a new one."""
    if from_stdin:
        if sys.stdin.isatty():
            return getpass.getpass("token: ").strip(), "standard input"
        return sys.stdin.readline().strip(), "standard input"
    supplied = os.environ.get(TOKEN_ENV, "").strip()
    return (supplied, TOKEN_ENV) if supplied else (new_token(), "")


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ServerSetupError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ServerSetupError(f"cannot use the TLS certificate {cert} and key {key}: {exc}") from exc
    return context


def serve_main(
    host: str,
    port: int,
    *,
    token_stdin: bool = False,
    watch_stdin: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    kb_folders: Sequence[str] | None = None,
) -> int:
    if kb_folders is not None and KB_FOLDERS_ENV not in os.environ:
        # One channel for the loader: the environment, as when the app starts us.
        os.environ[KB_FOLDERS_ENV] = folders_to_env(kb_folders)
    limit_malloc_arenas(MALLOC_ARENAS)  # before the models start their threads
    token, origin = read_token(token_stdin)  # before the parent watch reads stdin to its end
    if not token:
        return _refuse("--token-stdin read no token (an empty first line)")
    die_with_parent(watch_stdin)
    try:
        tls = tls_context(tls_cert, tls_key)
        check_address(host, tls is not None)
    except ServerSetupError as exc:
        return _refuse(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s", force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if not is_loopback_host(host):  # with TLS, or check_address had refused
        print(
            f"helpdesk-voice: warning: listening on {host}, reachable from other machines; "
            "anyone with the token can use it",
            file=sys.stderr,
            flush=True,
        )
    _say("helpdesk-voice embedded server")
    started = time.monotonic()
    components = load_components(_say)
    # Loading frees much on the way (the voice's model file once parsed, a first synthesis's
    # buffers): given back now, not at the end of the first response, it is not held while idle.
    give_back_memory()
    _say(f"loaded in {time.monotonic() - started:.1f} s")
    server = EmbeddedServer(components, token, host, port, tls=tls)
    return asyncio.run(_serve(server, f"from {origin}" if origin else token))


async def _serve(server: EmbeddedServer, token_line: str) -> int:
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
    _say(f"token: {token_line}")  # a token given to us is not repeated where logs may keep it
    _say(READY_LINE)
    await stop.wait()
    await server.close()
    return 0
