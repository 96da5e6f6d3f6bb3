"""From settings to a plan (pure), and the runner that carries a plan out (real server and devices)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app import config
from app.audio.bargein import DetectorSettings
from app.config import load_settings
from app.core import wire
from app.core.actions import Notice, StateChanged
from app.launch import (
    UNKNOWN_CAP_ROLLOVER_S,
    ConversationRunner,
    LaunchError,
    LaunchPlan,
    detector_settings,
    plan_from_settings,
    rollover_after_s,
    session_cap_s,
)
from app.realtime.endpoint import API_KEY_ENV, store_api_key
from app.settings_rules import cross_field_problems
from tests.engine_support import Recorder
from tests.file_keyring import FileKeyring

KEY = "sk-test-0123456789abcdefSECRET"


def plan(env: dict[str, str], cli: dict[str, object] | None = None, /, **extra: str) -> LaunchPlan:
    environ = {**env, **extra}
    return plan_from_settings(load_settings(cli, environ), environ)


def test_nothing_configured_means_the_embedded_server_with_its_shorter_pause(env: dict[str, str]) -> None:
    result = plan(env)
    assert result.backend == "embedded" and result.endpoint is None
    detection = result.session.turn_detection
    assert detection is not None and (detection.kind, detection.silence_duration_ms) == ("server_vad", 400)
    chosen = plan(env, {"turn_detection": "semantic_vad"}).session.turn_detection
    assert chosen is not None and (chosen.kind, chosen.eagerness) == ("semantic_vad", "auto")
    assert result.session.model is None
    assert result.input_device is None and result.output_device is None
    assert result.tools_allowed == config.KNOWN_TOOLS
    assert result.detector == DetectorSettings()
    assert result.audio.echo_cancellation  # laptop speakers are the common case


def test_a_url_on_the_command_line_means_that_server(env: dict[str, str]) -> None:
    result = plan(env, {"endpoint.url": "ws://127.0.0.1:9/realtime", "audio.input_device": "Headset"})
    assert result.backend == "custom" and result.endpoint is not None
    assert result.endpoint.url == "ws://127.0.0.1:9/realtime"
    assert result.endpoint.headers == {}  # no key known: none sent
    assert result.input_device == "Headset"
    assert result.session.turn_detection is not None
    assert result.session.turn_detection.silence_duration_ms == 500  # the cloud default


def test_the_stored_key_goes_only_to_the_server_chosen_in_settings(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    """A --url from a script or a shortcut must not be a way to collect the key from the keyring."""
    store_api_key(KEY)
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(
        'backend = "custom"\n[endpoint]\nurl = "wss://voice.example.com/rt"\n'
    )
    chosen = plan(env)
    assert chosen.endpoint is not None and chosen.endpoint.headers == {"Authorization": f"Bearer {KEY}"}
    assert chosen.warnings == ()

    elsewhere = plan(env, {"endpoint.url": "wss://collector.example.net/rt"})
    assert elsewhere.endpoint is not None and elsewhere.endpoint.host == "collector.example.net"
    assert elsewhere.endpoint.headers == {}
    [warning] = elsewhere.warnings
    assert "only sent to the server chosen in Settings" in warning and API_KEY_ENV in warning
    from_env = plan(env, **{"HELPDESK_VOICE_ENDPOINT_URL": "wss://collector.example.net/rt"})
    assert from_env.endpoint is not None and from_env.endpoint.headers == {}

    # A key the user hands over in the environment goes where they point it.
    handed = plan(env, {"endpoint.url": "wss://collector.example.net/rt"}, **{API_KEY_ENV: "sk-other-1"})
    assert handed.endpoint is not None and handed.endpoint.headers == {"Authorization": "Bearer sk-other-1"}
    assert handed.warnings == ()


def test_openai_chosen_on_the_command_line_does_not_get_the_stored_key(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    store_api_key(KEY)
    with pytest.raises(LaunchError, match="only sent to the server chosen in Settings"):
        plan(env, **{"HELPDESK_VOICE_BACKEND": "openai"})


def test_plain_ws_to_another_host_connects_without_the_key_and_says_so(env: dict[str, str]) -> None:
    result = plan(env, {"endpoint.url": "ws://voice.example.com/rt"}, **{API_KEY_ENV: KEY})
    assert result.endpoint is not None and result.endpoint.headers == {}
    [warning] = result.warnings
    assert "not encrypted" in warning and KEY not in warning


def test_openai_without_a_key_is_refused_with_where_to_put_one(env: dict[str, str]) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text('backend = "openai"\n')
    with pytest.raises(LaunchError, match=r"no API key for OpenAI.*Settings.*HELPDESK_VOICE_API_KEY"):
        plan(env, **{API_KEY_ENV: ""})


def test_openai_with_a_key_uses_the_model_in_the_url_and_the_key_in_a_header(env: dict[str, str]) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(
        'backend = "openai"\n[endpoint]\nmodel = "gpt-realtime-mini"\n'
    )
    result = plan(env, **{API_KEY_ENV: KEY})
    assert result.backend == "openai" and result.endpoint is not None
    assert result.endpoint.url.endswith("?model=gpt-realtime-mini")
    assert result.endpoint.headers == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in repr(result)


def test_azure_without_a_deployment_is_a_clear_refusal(env: dict[str, str]) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(
        'backend = "azure"\n[endpoint]\nazure_resource = "contoso"\n'
    )
    with pytest.raises(
        LaunchError, match="the Azure OpenAI backend needs the name of the realtime"
    ) as caught:
        plan(env, **{API_KEY_ENV: KEY})
    assert caught.value.usage


@pytest.mark.parametrize(
    ("user_settings", "key", "usage"),
    [
        ('backend = "custom"\n', "endpoint.url", False),
        ('backend = "openai"\n[endpoint]\nmodel = ""\n', "endpoint.model", True),
        ('backend = "azure"\n', "endpoint.azure_resource", True),
        ('backend = "azure"\n[endpoint]\nazure_resource = "contoso"\n', "endpoint.azure_deployment", True),
        ('backend = "azure"\n[endpoint]\nazure_resource = "c"\nazure_deployment = "rt"\n', "api_key", False),
    ],
)
def test_the_launcher_refuses_with_the_rule_sentence(
    env: dict[str, str], file_keyring: FileKeyring, user_settings: str, key: str, usage: bool
) -> None:
    """The words are those of app.settings_rules, which the Settings dialog shows under the field."""
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(user_settings)
    settings = load_settings(None, env)
    key_present = key != "api_key"
    [first, *_] = cross_field_problems(settings.values, api_key_present=key_present)
    assert first.key == key
    with pytest.raises(LaunchError) as caught:
        plan_from_settings(settings, {**env, API_KEY_ENV: KEY} if key_present else env)
    assert str(caught.value) == first.message and caught.value.usage == usage


def test_a_held_back_key_adds_why_to_the_rule_sentence(
    env: dict[str, str], file_keyring: FileKeyring
) -> None:
    store_api_key(KEY)
    with pytest.raises(LaunchError) as caught:
        plan(env, **{"HELPDESK_VOICE_BACKEND": "openai"})
    [problem] = cross_field_problems(
        load_settings(None, {**env, "HELPDESK_VOICE_BACKEND": "openai"}).values, False
    )
    assert str(caught.value).startswith(problem.message + " (the API key in the system keyring is only sent")


def test_the_plan_reads_the_typed_settings(env: dict[str, str]) -> None:
    """The plan takes its values from LoadedSettings.typed: change that alone and the plan follows."""
    settings = load_settings(None, env)
    typed = dataclasses.replace(
        settings.typed,
        push_to_talk=True,
        audio=dataclasses.replace(settings.typed.audio, block_ms=30, input_device="Headset"),
        tools=config.ToolSettings(allowed=("create_ticket",)),
    )
    result = plan_from_settings(dataclasses.replace(settings, typed=typed), env)
    assert result.push_to_talk and result.audio.block_ms == 30.0 and result.input_device == "Headset"
    assert result.tools_allowed == ("create_ticket",)


def test_conversation_settings_reach_the_session(env: dict[str, str]) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(
        'voice = "cedar"\ninstructions = "Be brief."\nturn_detection = "semantic_vad"\neagerness = "high"\n'
        'push_to_talk = true\n[barge_in]\nsensitivity = "low"\n'
        "[audio]\nblock_ms = 20\necho_cancellation = false\n"
        '[tools]\nallowed = ["search_knowledge_base"]\n'
    )
    result = plan(env)
    assert result.session.voice == "cedar" and result.session.instructions == "Be brief."
    detection = result.session.turn_detection
    assert detection is not None and detection.kind == "semantic_vad" and detection.eagerness == "high"
    assert "silence_duration_ms" not in wire.write(detection)
    assert result.push_to_talk and result.audio.block_ms == 20.0
    assert not result.audio.echo_cancellation
    assert result.detector == detector_settings("low")
    assert result.tools_allowed == ("search_knowledge_base",)


def test_a_chosen_pause_length_wins_over_the_backend_default(env: dict[str, str]) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text("silence_ms = 700\n")
    detection = plan(env).session.turn_detection
    assert detection is not None and detection.silence_duration_ms == 700


def test_sensitivity_orders_how_readily_the_user_interrupts() -> None:
    low, medium, high = (detector_settings(s) for s in ("low", "medium", "high"))
    assert high.onset_frames < medium.onset_frames < low.onset_frames
    assert high.margin_db < medium.margin_db < low.margin_db
    with pytest.raises(ValueError, match="low, medium or high"):
        detector_settings("loud")


# ---------------------------------------------------------------------------------------------------
# Session length: a planned rollover before each endpoint's own cap
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_settings", "cap_min", "rollover_min"),
    [
        ("", None, None),  # the embedded offline server has no cap: no planned rollover
        ('backend = "openai"\n', 60.0, 55.0),
        ('backend = "azure"\n[endpoint]\nazure_resource = "contoso"\nazure_deployment = "rt"\n', 30.0, 25.0),
        # A pasted OpenAI or Azure URL is that service, with its cap, whatever the setting says.
        (
            'backend = "custom"\n[endpoint]\nurl = "wss://api.openai.com/v1/realtime?model=gpt-realtime"\n'
            "session_minutes = 10\n",
            60.0,
            55.0,
        ),
        (
            'backend = "custom"\n[endpoint]\n'
            'url = "wss://contoso.openai.azure.com/openai/v1/realtime?model=rt"\n',
            30.0,
            25.0,
        ),
        # A custom server: its cap from endpoint.session_minutes, else not known (55 minutes as before).
        ('backend = "custom"\n[endpoint]\nurl = "wss://voice.example.com/rt"\n', None, 55.0),
        (
            'backend = "custom"\n[endpoint]\nurl = "wss://voice.example.com/rt"\nsession_minutes = 120\n',
            120.0,
            115.0,
        ),
        (
            'backend = "custom"\n[endpoint]\nurl = "wss://voice.example.com/rt"\nsession_minutes = 15\n',
            15.0,
            12.5,
        ),
        (
            'backend = "custom"\n[endpoint]\nurl = "ws://127.0.0.1:9/rt"\nsession_minutes = 0.2\n',
            0.2,
            0.2 * 5 / 6,
        ),
    ],
)
def test_the_plan_rolls_over_before_each_endpoints_session_cap(
    env: dict[str, str], user_settings: str, cap_min: float | None, rollover_min: float | None
) -> None:
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text(user_settings)
    result = plan(env, **{API_KEY_ENV: KEY})
    kind = "embedded" if result.endpoint is None else result.endpoint.kind
    minutes = load_settings(None, env).typed.endpoint.session_minutes
    cap = session_cap_s(kind, minutes)
    assert cap == (None if cap_min is None else pytest.approx(cap_min * 60))
    after = result.rollover_after_s
    if rollover_min is None:
        assert after is None
        return
    assert after is not None and after == pytest.approx(rollover_min * 60)
    assert cap is None or after < cap


def test_the_rollover_margin_is_five_minutes_or_a_sixth_of_a_short_cap() -> None:
    for minutes in (0.1, 0.5, 1, 10, 29, 30, 31, 60, 240, 1440):
        cap = minutes * 60.0
        after = rollover_after_s("custom", minutes)
        assert after is not None and after == pytest.approx(cap - min(300.0, cap / 6)), minutes
        assert 0 < after < cap
    assert rollover_after_s("custom", 0.1) == pytest.approx(5.0)  # a test's cap of six seconds
    assert rollover_after_s("custom") == UNKNOWN_CAP_ROLLOVER_S == 55 * 60.0
    assert rollover_after_s("openai", 10) == 55 * 60.0  # the setting is for custom servers only
    assert rollover_after_s("embedded") is None and session_cap_s("embedded") is None


@pytest.mark.parametrize(
    ("text", "minutes", "problem"),
    [
        ("0.5", 0.5, None),
        ("45", 45.0, None),
        ("", 0.0, None),  # empty: not known
        ("0", 0.0, None),
        ("0.01", 0.0, "must be 0 (not known) or from 0.1 to 1440 minutes"),
        ("-5", 0.0, "must be 0 (not known) or from 0.1 to 1440 minutes"),
        ("2000", 0.0, "must be 0 (not known) or from 0.1 to 1440 minutes"),
        ("half an hour", 0.0, "must be a number"),
        ("nan", 0.0, "must be a number"),
    ],
)
def test_the_session_length_setting_is_checked_like_the_others(
    env: dict[str, str], text: str, minutes: float, problem: str | None
) -> None:
    settings = load_settings(None, {**env, "HELPDESK_VOICE_ENDPOINT_SESSION_MINUTES": text})
    assert settings.typed.endpoint.session_minutes == minutes
    if problem is None:
        assert settings.problems == [] and settings.origin("endpoint.session_minutes") == "env"
    else:
        [found] = settings.problems
        assert "endpoint.session_minutes" in found and problem in found


def test_the_session_length_is_saved_and_read_back_as_minutes(env: dict[str, str]) -> None:
    config.save_user_setting("endpoint.session_minutes", "12.5", env)
    assert load_settings(None, env).typed.endpoint.session_minutes == 12.5
    (Path(env[config.CONFIG_DIR_ENV]) / "settings.toml").write_text("[endpoint]\nsession_minutes = 30\n")
    assert load_settings(None, env).typed.endpoint.session_minutes == 30.0  # a TOML integer is fine
    with pytest.raises(config.ConfigError, match=r"endpoint\.session_minutes must be 0"):
        config.save_user_setting("endpoint.session_minutes", 0.05, env)


# ---------------------------------------------------------------------------------------------------
# The runner, for real
# ---------------------------------------------------------------------------------------------------


@pytest.mark.devices
def test_stop_during_the_offline_server_start_ends_it_quickly(
    virtual_audio: Any, env: dict[str, str]
) -> None:
    progress: list[str] = []
    runner = ConversationRunner(
        plan(env, {"audio.input_device": virtual_audio.mic, "audio.output_device": virtual_audio.speaker}),
        Recorder(),
        progress.append,
    )
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            runner.start()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    deadline = time.monotonic() + 30
    while not progress and time.monotonic() < deadline:
        time.sleep(0.02)
    assert progress, "no progress from the offline server"
    time.sleep(0.5)  # the models are loading now
    stop_at = time.monotonic()
    runner.stop()
    thread.join(5)
    took = time.monotonic() - stop_at
    assert not thread.is_alive()
    assert took < 2.0, f"stopping mid-start took {took:.2f} s"
    assert isinstance(outcome[0], LaunchError) and "stopped before it started" in str(outcome[0])
    assert runner.engine is None


@pytest.mark.devices
def test_runner_reaches_listening_and_stops_within_a_second(virtual_audio: Any, env: dict[str, str]) -> None:
    listener = Recorder()
    runner = ConversationRunner(
        plan(env, {"audio.input_device": virtual_audio.mic, "audio.output_device": virtual_audio.speaker}),
        listener,
    )
    runner.start()
    try:
        assert runner.description == f"listening on {virtual_audio.mic} -> {virtual_audio.speaker}"
        listener.wait_for(
            lambda: any(e.state.value == "listening" for e in listener.of(StateChanged)), 60, "listening"
        )
        assert runner.engine is not None and runner.engine.running
        assert runner.engine.config.rollover_after_s is None  # the offline server has no session cap
    finally:
        stop_at = time.monotonic()
        runner.stop()
        took = time.monotonic() - stop_at
    assert took < 1.5, f"stopping took {took:.2f} s"
    assert not [n for n in listener.of(Notice) if n.level == "error"]


def test_an_unknown_device_is_a_usage_error(env: dict[str, str]) -> None:
    runner = ConversationRunner(plan(env, {"audio.input_device": "no-such-microphone-xyz"}), Recorder())
    with pytest.raises(LaunchError) as caught:
        runner.start()
    assert caught.value.usage and "no-such-microphone-xyz" in str(caught.value)
