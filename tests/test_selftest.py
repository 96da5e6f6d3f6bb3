"""``helpdesk-voice selftest`` beyond the audio check: settings, API key, endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from websockets.sync.server import ServerConnection, serve

from app.config import load_settings
from app.realtime import custom_endpoint
from app.selftest import check_endpoint, check_keyring, check_settings, probe
from app.testkit.rig import VirtualAudioRig
from tests.file_keyring import FileKeyring
from tests.scripted_peer import ScriptedPeer

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_probe_accepts_a_server_that_opens_a_session() -> None:
    with ScriptedPeer([]) as peer:
        assert probe(custom_endpoint(peer.url, None), timeout=5) is None


def test_probe_says_why_when_nothing_listens() -> None:
    problem = probe(custom_endpoint(f"ws://127.0.0.1:{_closed_port()}/v1/realtime", None), timeout=5)
    assert problem is not None and "refused" in problem.lower()


def test_probe_refuses_a_websocket_server_that_is_not_a_realtime_one() -> None:
    def echo(ws: ServerConnection) -> None:
        ws.send('{"type": "hello"}')
        ws.recv()

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        problem = probe(custom_endpoint(f"ws://127.0.0.1:{port}/", None), timeout=5)
        server.shutdown()
    assert problem is not None and "not with a realtime session" in problem and "hello" in problem


def test_settings_problems_and_a_missing_key_fail_their_checks(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    Path(env["HELPDESK_VOICE_CONFIG_DIR"], "settings.toml").write_text('backend = "openai"\n')
    settings = load_settings(None, {**env, "HELPDESK_VOICE_API_KEY": "", "HELPDESK_VOICE_SILENCE_MS": "soon"})
    assert not check_settings(settings).ok
    assert "HELPDESK_VOICE_SILENCE_MS" in check_settings(settings).detail
    key = check_keyring(settings, {**env, "HELPDESK_VOICE_API_KEY": ""})
    assert not key.ok and key.line().startswith("API key: FAILED: ")
    endpoint = check_endpoint(settings, lambda line: None)
    assert not endpoint.ok and "no API key for OpenAI" in endpoint.detail


def test_the_offline_backend_needs_no_key(env: dict[str, str], file_keyring: FileKeyring) -> None:
    settings = load_settings(None, env)
    assert check_settings(settings).ok
    key = check_keyring(settings, env)
    assert key.ok and "not needed for the embedded backend" in key.detail


@pytest.mark.devices
def test_selftest_checks_the_offline_assistant_and_the_devices(virtual_audio: VirtualAudioRig) -> None:
    rig = virtual_audio
    done = subprocess.run(
        [sys.executable, "-m", "app", "selftest", "--input-device", rig.mic, "--output-device", rig.speaker],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "settings: ok: backend embedded" in lines
    assert "endpoint: ok: the offline assistant starts and answers" in lines
    assert any(line.startswith("API key: ok:") for line in lines)
    assert lines[-1].startswith("OK: ")


def test_selftest_fails_when_the_configured_endpoint_is_down(tmp_path: Path) -> None:
    env = {**os.environ, "HELPDESK_VOICE_ENDPOINT_URL": f"ws://127.0.0.1:{_closed_port()}/v1/realtime"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "selftest", "--input-device", "no such microphone"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert "endpoint: FAILED:" in done.stdout and "refused" in done.stdout.lower()
    assert done.returncode != 0


def test_with_a_token_service_the_check_is_for_the_device_credential_not_a_key(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    environ = {
        **env,
        "HELPDESK_VOICE_BACKEND": "openai",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": "https://tokens.example.com/v1/realtime/client_secrets",
    }
    settings = load_settings(None, environ)
    missing = check_keyring(settings, environ)
    assert not missing.ok and "token service" in missing.detail and "device credential" in missing.detail
    file_keyring.set_password("helpdesk-voice", "token_service", "laptop-credential-0123456789")
    found = check_keyring(settings, environ)
    assert found.ok and "device credential: keyring" in found.detail
    assert "laptop-credential" not in found.detail
