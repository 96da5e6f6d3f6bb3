"""The Realtime protocol codec against the ``openai`` package's GA types, used as an oracle.

Client events must validate as ``RealtimeClientEvent`` with no field the schema does not know (the
openai models accept unknown fields, so a misspelt name would otherwise slip through). Recorded-style
server events must validate as ``RealtimeServerEvent`` and parse into the expected dataclasses. The
parser must never raise, whatever arrives.
"""

from __future__ import annotations

import base64
import collections.abc
import copy
import dataclasses
import json
import math
import random
import struct
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core import protocol as p
from app.core import wire

realtime = pytest.importorskip("openai.types.realtime")
pydantic = pytest.importorskip("pydantic")

CLIENT_ADAPTER = pydantic.TypeAdapter(realtime.RealtimeClientEvent)
SERVER_ADAPTER = pydantic.TypeAdapter(realtime.RealtimeServerEvent)

RECORDED_PATH = Path(__file__).parent / "data" / "server_events.jsonl"
RECORDED: list[str] = RECORDED_PATH.read_text(encoding="utf-8").splitlines()


def _assert_no_extras(value: object, path: str = "event") -> None:
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"{path} has fields the GA schema does not know: {value.model_extra}"
        for name in type(value).model_fields:
            _assert_no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            _assert_no_extras(element, f"{path}[{index}]")


def _validate_client(event: p.ClientEvent) -> Any:
    """The event as the GA schema reads it; the server role must read it back as the same event."""
    body = wire.write(event)
    model = CLIENT_ADAPTER.validate_python(body)
    _assert_no_extras(model)
    assert json.loads(p.encode(event)) == body
    read_back = p.parse_client_event(p.encode(event))
    assert not isinstance(read_back, p.UnknownEvent | p.MalformedEvent), read_back
    assert wire.write(read_back) == body
    return model


# ---------------------------------------------------------------------------------------------------
# Client events
# ---------------------------------------------------------------------------------------------------

RESET_VPN = p.ToolSpec(
    name="reset_vpn_profile",
    description="Reset the user's VPN profile on this computer.",
    parameters={"type": "object", "properties": {"profile": {"type": "string"}}, "required": ["profile"]},
)
OPEN_TICKET = p.ToolSpec(name="open_ticket", description="Open a helpdesk ticket.")


def test_session_update_server_vad_matches_ga_schema() -> None:
    config = p.Session(
        instructions="You are the IT helpdesk assistant.",
        model="gpt-realtime",
        voice="cedar",
        transcription=p.Transcription("gpt-4o-mini-transcribe"),
        turn_detection=p.TurnDetection(
            "server_vad",
            threshold=0.6,
            prefix_padding_ms=250,
            silence_duration_ms=700,
            eagerness="high",  # not valid for server_vad: must not be sent
            interrupt_response=False,
        ),
        tools=(RESET_VPN, OPEN_TICKET),
    )
    update = p.SessionUpdate(config, event_id="cli_0001")
    model = _validate_client(update)
    event = wire.write(update)

    assert isinstance(model, realtime.SessionUpdateEvent)
    assert model.event_id == "cli_0001"
    session = model.session
    assert isinstance(session, realtime.RealtimeSessionCreateRequest)
    assert session.type == "realtime"
    assert session.model == "gpt-realtime"
    assert session.instructions == "You are the IT helpdesk assistant."
    assert session.output_modalities == ["audio"]
    assert session.tool_choice == "auto"
    assert session.audio is not None and session.audio.input is not None and session.audio.output is not None
    for audio_format in (session.audio.input.format, session.audio.output.format):
        assert audio_format is not None
        assert (audio_format.type, audio_format.rate) == ("audio/pcm", 24000)
    assert session.audio.output.voice == "cedar"
    assert session.audio.input.transcription is not None
    assert session.audio.input.transcription.model == "gpt-4o-mini-transcribe"
    vad = session.audio.input.turn_detection
    assert vad is not None and vad.type == "server_vad"
    assert (vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms) == (0.6, 250, 700)
    assert (vad.create_response, vad.interrupt_response) == (True, False)
    assert "eagerness" not in event["session"]["audio"]["input"]["turn_detection"]
    assert session.tools is not None
    assert [(tool.type, tool.name, tool.description) for tool in session.tools] == [
        ("function", "reset_vpn_profile", "Reset the user's VPN profile on this computer."),
        ("function", "open_ticket", "Open a helpdesk ticket."),
    ]
    assert session.tools[0].parameters == RESET_VPN.parameters
    assert session.tools[1].parameters == {"type": "object", "properties": {}}


def test_session_update_semantic_vad_renders_only_its_fields() -> None:
    detection = p.TurnDetection(
        "semantic_vad", threshold=0.9, prefix_padding_ms=100, eagerness="low", create_response=False
    )
    update = p.SessionUpdate(p.Session(instructions="Be brief.", turn_detection=detection))
    model = _validate_client(update)
    event = wire.write(update)

    rendered = event["session"]["audio"]["input"]["turn_detection"]
    assert rendered == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": False,
        "interrupt_response": True,
    }
    vad = model.session.audio.input.turn_detection
    assert (vad.type, vad.eagerness, vad.create_response) == ("semantic_vad", "low", False)


def test_session_update_without_turn_detection_transcription_or_model() -> None:
    update = p.SessionUpdate(p.Session(instructions="", turn_detection=None))
    model = _validate_client(update)
    event = wire.write(update)

    audio_input = event["session"]["audio"]["input"]
    assert "turn_detection" in audio_input and audio_input["turn_detection"] is None  # null turns it off
    assert "transcription" not in audio_input
    assert "model" not in event["session"]
    assert "event_id" not in event
    assert event["session"]["tools"] == []
    assert model.session.audio.output.voice is None  # the server's own default
    assert model.session.instructions == ""


def test_input_audio_buffer_append_round_trips_pcm() -> None:
    pcm = struct.pack("<4h", 0, 1000, -1000, 32767)
    for buffer in (pcm, bytearray(pcm), memoryview(pcm)):
        # A caller's buffer is copied: it may change after the event is built.
        model = _validate_client(p.InputAudioBufferAppend(buffer, event_id="cli_0002"))  # type: ignore[arg-type]
        assert isinstance(model, realtime.InputAudioBufferAppendEvent)
        assert base64.b64decode(model.audio) == pcm
        assert model.event_id == "cli_0002"
    assert _validate_client(p.InputAudioBufferAppend(b"")).audio == ""


def test_input_audio_buffer_append_rejects_half_samples() -> None:
    with pytest.raises(ValueError, match="whole number of 16-bit samples"):
        p.InputAudioBufferAppend(b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("build", "model_class"),
    [
        (p.InputAudioBufferCommit, "InputAudioBufferCommitEvent"),
        (p.InputAudioBufferClear, "InputAudioBufferClearEvent"),
        (p.ResponseCreate, "ResponseCreateEvent"),
        (p.ResponseCancel, "ResponseCancelEvent"),
    ],
)
def test_argumentless_events(build: Callable[..., p.ClientEvent], model_class: str) -> None:
    bare = build()
    assert set(wire.write(bare)) == {"type"}
    assert type(_validate_client(bare)).__name__ == model_class
    tagged = _validate_client(build(event_id="cli_0003"))
    assert tagged.event_id == "cli_0003"


def test_user_text_item() -> None:
    model = _validate_client(
        dataclasses.replace(
            p.ConversationItemCreate.message("user", "Mon VPN est cassé 🙁"), event_id="cli_4"
        )
    )
    assert isinstance(model, realtime.ConversationItemCreateEvent)
    assert model.event_id == "cli_4"
    item = model.item
    assert isinstance(item, realtime.RealtimeConversationItemUserMessage)
    assert [(part.type, part.text) for part in item.content] == [("input_text", "Mon VPN est cassé 🙁")]


def test_assistant_text_item_uses_output_text() -> None:
    model = _validate_client(p.ConversationItemCreate.message("assistant", "Try restarting the client."))
    item = model.item
    assert isinstance(item, realtime.RealtimeConversationItemAssistantMessage)
    assert [(part.type, part.text) for part in item.content] == [
        ("output_text", "Try restarting the client.")
    ]


def test_function_call_item_for_replay() -> None:
    args = '{"profile":"Contoso-Corp"}'
    model = _validate_client(p.ConversationItemCreate.function_call("call_1", "reset_vpn_profile", args))
    item = model.item
    assert isinstance(item, realtime.RealtimeConversationItemFunctionCall)
    assert (item.call_id, item.name, item.arguments) == ("call_1", "reset_vpn_profile", args)


def test_function_call_output_item() -> None:
    model = _validate_client(
        dataclasses.replace(
            p.ConversationItemCreate.function_call_output("call_1", '{"ok":true}'), event_id="cli_5"
        )
    )
    item = model.item
    assert isinstance(item, realtime.RealtimeConversationItemFunctionCallOutput)
    assert (item.call_id, item.output, model.event_id) == ("call_1", '{"ok":true}', "cli_5")


def test_truncate() -> None:
    model = _validate_client(p.ConversationItemTruncate("item_A", 0, 1460, event_id="cli_6"))
    assert isinstance(model, realtime.ConversationItemTruncateEvent)
    assert (model.item_id, model.content_index, model.audio_end_ms, model.event_id) == (
        "item_A",
        0,
        1460,
        "cli_6",
    )
    assert _validate_client(p.ConversationItemTruncate("item_A", 0, 0)).audio_end_ms == 0


@pytest.mark.parametrize(
    ("content_index", "audio_end_ms", "error"),
    [
        (0, -1, ValueError),
        (0, 1.5, TypeError),
        (0, True, TypeError),
        (0, "100", TypeError),
        (-1, 100, ValueError),
        (0.0, 100, TypeError),
    ],
)
def test_truncate_rejects_bad_numbers(content_index: Any, audio_end_ms: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        p.ConversationItemTruncate("item_A", content_index, audio_end_ms)


def test_response_create_with_instructions() -> None:
    model = _validate_client(
        p.ResponseCreate(p.ResponseOptions("Tell the user the ticket number."), event_id="cli_7")
    )
    assert model.response is not None
    assert model.response.instructions == "Tell the user the ticket number."
    assert model.event_id == "cli_7"


def test_response_cancel_with_id() -> None:
    event = p.ResponseCancel("resp_123")
    assert _validate_client(event).response_id == "resp_123"
    assert p.encode(event) == '{"type":"response.cancel","response_id":"resp_123"}'


def test_encode_keeps_unicode_and_refuses_nan() -> None:
    text = p.encode(p.ConversationItemCreate.message("user", "naïve ✓"))
    assert "naïve ✓" in text
    assert json.loads(text)["item"]["content"][0]["text"] == "naïve ✓"
    with pytest.raises(ValueError):
        p.encode({"type": "x", "value": math.nan})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "push_to_talk"},
        {"threshold": 1.5},
        {"threshold": -0.1},
        {"threshold": math.nan},
        {"threshold": True},
        {"prefix_padding_ms": -1},
        {"silence_duration_ms": 2.5},
        {"silence_duration_ms": False},
        {"eagerness": "eager"},
        {"create_response": 1},
    ],
)
def test_turn_detection_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        p.TurnDetection(**kwargs)


def test_tool_spec_validation_and_isolation() -> None:
    with pytest.raises(ValueError):
        p.ToolSpec(name="reset vpn", description="has a space")
    with pytest.raises(ValueError):
        p.ToolSpec(name="x" * 65, description="too long")
    with pytest.raises(ValueError, match="unique"):
        p.Session(instructions="", tools=(OPEN_TICKET, OPEN_TICKET))

    rendered = wire.write(RESET_VPN)
    rendered["parameters"]["properties"]["injected"] = {"type": "string"}
    assert "injected" not in RESET_VPN.parameters["properties"]
    assert hash(RESET_VPN) == hash(p.ToolSpec(RESET_VPN.name, RESET_VPN.description, {}))

    config = p.Session(instructions="", tools=[RESET_VPN])  # type: ignore[arg-type]
    assert config.tools == (RESET_VPN,)


# ---------------------------------------------------------------------------------------------------
# Server events: the recorded session
# ---------------------------------------------------------------------------------------------------

HANDLED_TYPES = {
    "session.created",
    "session.updated",
    "error",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.truncated",
    "response.created",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.done",
    "rate_limits.updated",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
}

SESS = "sess_CGt5Xq2wJ1kLmN8pQrStU"
RESP1 = "resp_CGt5ZbYh3KfQ0wErTy7Ui"
RESP2 = "resp_CGt62nVbX4cZ9aSdFg1Hj"
RESP3 = "resp_CGt68Lk2PoIuYtRe5Wq3A"
RESP4 = "resp_CGt6AzXc7VbNm1QwEr9Ty"
USER1 = "item_CGt5YsE4rTyUiOp1AsDfG"
USER2 = "item_CGt6BqAz8XsWcEdRfVtGb"
ASST1 = "item_CGt5ZcVbN2mQwErTyUiOp"
ASST2 = "item_CGt68MnBvCxZaSdFgHjKl"
CALL_ITEM = "item_CGt62oPlKmJnHbGvFcDxS"
CALL_ID = "call_Xk8Lp2Qr7Vt1Zs4N"
ANSWER = "Sure, I can help with the VPN. Which profile are you using?"
ARGS = '{"profile":"Contoso-Corp"}'
TEXT = "Your ticket number is HD-20417."


def _sine_pcm() -> bytes:
    """The 10 ms of 440 Hz tone that the recorded audio delta carries."""
    samples = (round(8000 * math.sin(2 * math.pi * 440 * n / 24000)) for n in range(240))
    return struct.pack("<240h", *samples)


USER_ITEM = p.ItemInfo(USER1, "message", "user", "completed", (p.ContentPart("input_audio"),))
ASST_STARTED = p.ItemInfo(ASST1, "message", "assistant", "in_progress")
ASST_DONE = p.ItemInfo(
    ASST1, "message", "assistant", "completed", (p.ContentPart("output_audio", None, ANSWER),)
)
CALL_STARTED = p.ItemInfo(
    CALL_ITEM, "function_call", status="in_progress", call_id=CALL_ID, name="reset_vpn_profile", arguments=""
)
CALL_DONE = dataclasses.replace(CALL_STARTED, status="completed", arguments=ARGS)
TEXT_ITEM = p.ItemInfo(ASST2, "message", "assistant", "completed", (p.ContentPart("output_text", TEXT),))
NO_DETAILS = None


def _details(kind: str, reason: str | None = None, error: tuple[str, str, str] | None = None) -> Any:
    error_type, code, message = error or (None, None, None)
    return p.ResponseStatusDetails(kind, reason, error_type, code, message)


# In file order; raw mappings are not compared.
EXPECTED: list[p.ServerEvent] = [
    p.SessionCreated(
        p.Session(
            id=SESS,
            object="realtime.session",
            model="gpt-realtime-2025-08-28",
            instructions="Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI.",
            voice="marin",
            speed=1.0,
            max_output_tokens="inf",
            truncation="auto",
            turn_detection=p.TurnDetection(
                "server_vad", threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500
            ),
        ),
        event_id="event_CGtisaUul34WEyoUqJ2rA",
    ),
    p.SessionUpdated(
        p.Session(
            id=SESS,
            object="realtime.session",
            model="gpt-realtime-2025-08-28",
            instructions="You are the IT helpdesk assistant for Contoso. Keep answers short and spoken.",
            voice="marin",
            speed=1.0,
            max_output_tokens="inf",
            truncation="auto",
            transcription=p.Transcription("gpt-4o-mini-transcribe", prompt=""),
            turn_detection=p.TurnDetection("semantic_vad", eagerness="low"),
            tools=(
                RESET_VPN,
                p.ToolSpec(
                    "open_ticket",
                    "Open a helpdesk ticket.",
                    {
                        "type": "object",
                        "properties": {
                            "summary": {"type": "string"},
                            "priority": {"type": "string", "enum": ["low", "normal", "high"]},
                        },
                        "required": ["summary"],
                    },
                ),
            ),
        ),
        event_id="event_CGtgQZdimLh0yr5WEttoM",
    ),
    p.SpeechStarted(1248, USER1, event_id="event_CGtfadK88T8tX4Ei3v72n"),
    p.SpeechStopped(4032, USER1, event_id="event_CGtew2BJLt2MBDPvp5m7T"),
    p.InputAudioBufferCommitted(USER1, None, event_id="event_CGtgP3dBvIP3xyrLk9agM"),
    p.ConversationItemAdded(USER_ITEM, None, event_id="event_CGtYXvRBRXgRB4CBXbmMe"),
    p.ConversationItemDone(USER_ITEM, None, event_id="event_CGtbD1QpzUtPBal2jkrqF"),
    p.ResponseCreated(RESP1, "in_progress", event_id="event_CGtr81Erv8hgHCOW3tjQH"),
    p.InputAudioTranscriptionDelta(USER1, 0, "My VPN keeps", event_id="event_CGtZyXGOQSIFOP7wn3dCe"),
    p.InputAudioTranscriptionCompleted(
        USER1, 0, "My VPN keeps disconnecting every few minutes.", event_id="event_CGtCpCPMubgZMud9pVaF2"
    ),
    p.ResponseOutputItemAdded(RESP1, 0, ASST_STARTED, event_id="event_CGtyCUYhpXwPI9faxrv78"),
    p.ConversationItemAdded(ASST_STARTED, USER1, event_id="event_CGtqfg4tSesjr0VcxfYmz"),
    p.ResponseContentPartAdded(
        RESP1, ASST1, 0, 0, p.ContentPart("audio", None, ""), event_id="event_CGtjQudc7D7GLHzZKJRbM"
    ),
    p.ResponseOutputAudioTranscriptDelta(
        RESP1, ASST1, 0, 0, "Sure, I can", event_id="event_CGtRo5TOPwJPvKApgCNa6"
    ),
    p.ResponseOutputAudioDelta(RESP1, ASST1, 0, 0, _sine_pcm(), event_id="event_CGtn5mhwzhxR7nhe7V1lG"),
    p.ResponseOutputAudioDone(RESP1, ASST1, 0, 0, event_id="event_CGtcgT4Likj8nSmbNhxN0"),
    p.ResponseOutputAudioTranscriptDone(RESP1, ASST1, 0, 0, ANSWER, event_id="event_CGtpEY5m8TCJeVjQDF3E0"),
    p.ResponseContentPartDone(
        RESP1, ASST1, 0, 0, p.ContentPart("audio", None, ANSWER), event_id="event_CGt4M2yicuws6rnNrEGWQ"
    ),
    p.ConversationItemDone(ASST_DONE, USER1, event_id="event_CGtF3k3iVpMNKEwvnAQ9S"),
    p.ResponseOutputItemDone(RESP1, 0, ASST_DONE, event_id="event_CGtbsSZWk4b4sOGdcLwgy"),
    p.ResponseDone(
        RESP1,
        "completed",
        NO_DETAILS,
        p.Usage(1523, 1187, 336, 1021, 166, 896, 72, 264),
        (ASST_DONE,),
        event_id="event_CGtQnUUuoxWPOpSmadmJu",
    ),
    p.RateLimitsUpdated(
        (p.RateLimit("requests", 5000, 4999, 0.012), p.RateLimit("tokens", 400000, 398163, 0.275)),
        event_id="event_CGtUs6ZrN64TVIUeN4x1D",
    ),
    p.OutputAudioBufferStarted(RESP1, event_id="event_CGtHdOfCwjbWSywBIcpOz"),
    p.OutputAudioBufferStopped(RESP1, event_id="event_CGthAOY91UwwDIq6QfGRk"),
    p.ResponseCreated(RESP2, "in_progress", event_id="event_CGtzTLF9GPwdtEb7kcuq7"),
    p.ResponseOutputItemAdded(RESP2, 0, CALL_STARTED, event_id="event_CGttRurTtuIXseQMSSljj"),
    p.ResponseFunctionCallArgumentsDelta(
        RESP2, CALL_ITEM, 0, CALL_ID, '{"profile":"Con', event_id="event_CGtuUBH4KQBVtlse1qSy3"
    ),
    p.ResponseFunctionCallArgumentsDone(
        RESP2, CALL_ITEM, 0, CALL_ID, "reset_vpn_profile", ARGS, event_id="event_CGtDkWcjN6Syi9Hf4N0G8"
    ),
    p.ConversationItemDone(CALL_DONE, ASST1, event_id="event_CGtYvJXS6Ha1an3sZiQyu"),
    p.ResponseOutputItemDone(RESP2, 0, CALL_DONE, event_id="event_CGtS6RsENNgTCRH38gStX"),
    p.ResponseDone(
        RESP2,
        "completed",
        NO_DETAILS,
        p.Usage(1688, 1650, 38, 1484, 166, 1408, 38, 0),
        (CALL_DONE,),
        event_id="event_CGt2B27gqQBfQJzWSqhh3",
    ),
    p.ResponseContentPartAdded(
        RESP3, ASST2, 0, 0, p.ContentPart("text", ""), event_id="event_CGt7gj0dZm2fv8uYrnB9S"
    ),
    p.ResponseOutputTextDelta(RESP3, ASST2, 0, 0, "Your ticket", event_id="event_CGtS4GOkcVElHiZKZoBiq"),
    p.ResponseOutputTextDone(RESP3, ASST2, 0, 0, TEXT, event_id="event_CGtnQrOXZFhJbVIhNMByP"),
    p.ResponseContentPartDone(
        RESP3, ASST2, 0, 0, p.ContentPart("text", TEXT), event_id="event_CGtrGHzuNsaEi6eqHoB9Z"
    ),
    p.ResponseDone(
        RESP3,
        "completed",
        NO_DETAILS,
        p.Usage(1741, 1712, 29, 1546, 166, 1536, 29, 0),
        (TEXT_ITEM,),
        event_id="event_CGtvj6OJEeTvcU7qo6rRG",
    ),
    p.SpeechStarted(9120, USER2, event_id="event_CGthL15XhdxwB3u3Ss5lT"),
    p.OutputAudioBufferCleared(RESP4, event_id="event_CGt34FSjNMz57jhvs0wCy"),
    p.ResponseDone(
        RESP4,
        "cancelled",
        _details("cancelled", "turn_detected"),
        p.Usage(1790, 1752, 38, 1562, 190, 1664, 12, 26),
        (),
        event_id="event_CGtZkLAtSWreAD91AcTGw",
    ),
    p.ConversationItemTruncated(
        "item_CGt6AzYb1NmKjHgFdSaQw", 0, 1460, event_id="event_CGtx4CFejgBm7ng3CV3Md"
    ),
    p.InputAudioBufferCleared(event_id="event_CGtqD0GSsHPzpWExxN2G1"),
    p.ResponseDone(
        "resp_CGt6DfGh2JkL4ZxCv6Bn8",
        "incomplete",
        _details("incomplete", "max_output_tokens"),
        p.Usage(2010, 1806, 204, 1570, 236, 1664, 40, 164),
        (),
        event_id="event_CGt3QAd6nJehIKr2QfcdJ",
    ),
    p.ResponseDone(
        "resp_CGt6GqWe3RtY5UiOp7As9",
        "failed",
        _details(
            "failed",
            None,
            ("server_error", "internal_error", "The server had an error while processing your request."),
        ),
        None,
        (),
        event_id="event_CGthOrRK4AEad7qLAWS2B",
    ),
    p.InputAudioTranscriptionFailed(
        USER2,
        0,
        "transcription_error",
        "audio_unintelligible",
        "Audio file might be corrupted or unsupported",
        event_id="event_CGteVSUm1sWr6dQ1mBFBC",
    ),
    p.ErrorEvent(
        "invalid_request_error",
        "invalid_value",
        "Invalid value: 'robot'. Supported values are: 'alloy', 'ash', 'ballad', 'coral', 'echo', 'sage', "
        "'shimmer', 'verse', 'marin', and 'cedar'.",
        "session.audio.output.voice",
        "cli_0007",
        event_id="event_CGtaJn6LVARFVki36DLyD",
    ),
]

RECORDED_IDS = [f"{n + 1:02d}-{json.loads(line)['type']}" for n, line in enumerate(RECORDED)]


def test_recorded_file_covers_every_handled_type() -> None:
    assert len(RECORDED) == len(EXPECTED)
    assert {json.loads(line)["type"] for line in RECORDED} == HANDLED_TYPES
    assert {type(event).TYPE for event in EXPECTED} == HANDLED_TYPES  # type: ignore[union-attr]


@pytest.mark.parametrize("line", RECORDED, ids=RECORDED_IDS)
def test_recorded_event_is_valid_ga(line: str) -> None:
    raw = json.loads(line)
    model = SERVER_ADAPTER.validate_python(raw)
    assert model.type == raw["type"]


@pytest.mark.parametrize(("line", "expected"), list(zip(RECORDED, EXPECTED, strict=True)), ids=RECORDED_IDS)
def test_recorded_event_parses_to_expected(line: str, expected: p.ServerEvent) -> None:
    parsed = p.parse_server_event(line)
    assert parsed == expected
    assert json.loads(line)["type"] == type(parsed).TYPE  # type: ignore[union-attr]
    assert p.parse_server_event(line.encode()) == expected
    assert p.parse_server_event(json.loads(line)) == expected


# Fields named as in the GA types, checked against the oracle's own reading of each event.
_SHARED_FIELDS = (
    "event_id",
    "item_id",
    "previous_item_id",
    "response_id",
    "output_index",
    "content_index",
    "audio_start_ms",
    "audio_end_ms",
    "transcript",
    "text",
    "call_id",
    "name",
    "arguments",
)


@pytest.mark.parametrize("line", RECORDED, ids=RECORDED_IDS)
def test_parsed_fields_agree_with_openai_model(line: str) -> None:
    model = SERVER_ADAPTER.validate_python(json.loads(line))
    parsed = p.parse_server_event(line)
    compared = 0
    for name in _SHARED_FIELDS:
        if hasattr(parsed, name) and name in type(model).model_fields:
            assert getattr(parsed, name) == getattr(model, name), name
            compared += 1
    assert compared >= 1
    if isinstance(parsed, p.ResponseOutputAudioDelta):
        assert parsed.audio == base64.b64decode(model.delta)
    if isinstance(parsed, p.ResponseDone | p.ResponseCreated):
        assert (parsed.response_id, parsed.status) == (model.response.id, model.response.status)
    if isinstance(parsed, p.ConversationItemAdded | p.ConversationItemDone | p.ResponseOutputItemDone):
        assert (parsed.item.id, parsed.item.type) == (model.item.id, model.item.type)
    if isinstance(parsed, p.ErrorEvent):
        error = model.error
        assert (parsed.code, parsed.message, parsed.param) == (error.code, error.message, error.param)
        assert parsed.client_event_id == error.event_id


def test_session_info_keeps_the_raw_session() -> None:
    parsed = p.parse_server_event(RECORDED[1])
    assert isinstance(parsed, p.SessionUpdated)
    assert parsed.session.raw["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    assert parsed.session.raw["expires_at"] == 1757953233


def test_item_text_joins_text_and_transcripts() -> None:
    assert ASST_DONE.text == ANSWER
    assert TEXT_ITEM.text == TEXT
    assert USER_ITEM.text == ""


def test_custom_voice_object() -> None:
    raw = json.loads(RECORDED[0])
    raw["session"]["audio"]["output"]["voice"] = {"id": "voice_1234"}
    SERVER_ADAPTER.validate_python(raw)
    parsed = p.parse_server_event(raw)
    assert isinstance(parsed, p.SessionCreated)
    assert parsed.session.voice_name == "voice_1234"


# ---------------------------------------------------------------------------------------------------
# Server events: what must not break the receive loop
# ---------------------------------------------------------------------------------------------------


def _recorded(event_type: str) -> dict[str, Any]:
    raw: dict[str, Any] = next(
        json.loads(line) for line in RECORDED if json.loads(line)["type"] == event_type
    )
    return raw


def test_unknown_type_is_reported_not_raised() -> None:
    raw = {
        "type": "response.mcp_call.in_progress",
        "event_id": "event_1",
        "item_id": "item_1",
        "output_index": 0,
    }
    SERVER_ADAPTER.validate_python(raw)  # a real GA event the client does not handle
    parsed = p.parse_server_event(json.dumps(raw))
    assert isinstance(parsed, p.UnknownEvent)
    assert parsed.type == "response.mcp_call.in_progress"
    assert parsed.raw == raw
    assert isinstance(p.parse_server_event('{"type":"future.event","x":1}'), p.UnknownEvent)


def _with_extras(value: Any) -> Any:
    if isinstance(value, dict):
        # A tool's parameters are a JSON schema, kept as it is: an extra field there is part of it.
        extended = {
            key: element if key == "parameters" else _with_extras(element) for key, element in value.items()
        }
        extended["x_future_field"] = {"nested": [1, "two", None]}
        return extended
    if isinstance(value, list):
        return [_with_extras(element) for element in value]
    return value


@pytest.mark.parametrize(("line", "expected"), list(zip(RECORDED, EXPECTED, strict=True)), ids=RECORDED_IDS)
def test_extra_fields_everywhere_are_ignored(line: str, expected: p.ServerEvent) -> None:
    assert p.parse_server_event(json.dumps(_with_extras(json.loads(line)))) == expected


@pytest.mark.parametrize(
    "data",
    ["", "{", "not json", '{"type":"error",}', b"\xff\xfe\x00", "[" * 100_000, "{'type': 'error'}"],
    ids=["empty", "open-brace", "words", "trailing-comma", "bad-utf8", "deep-nesting", "single-quotes"],
)
def test_bad_json_is_malformed(data: str | bytes) -> None:
    parsed = p.parse_server_event(data)
    assert isinstance(parsed, p.MalformedEvent)
    assert parsed.reason.startswith("not valid JSON"), parsed.reason
    assert len(parsed.raw_excerpt) <= 200


@pytest.mark.parametrize("data", ["[]", "42", '"session.created"', "null", "true", '[{"type":"error"}]'])
def test_non_object_json_is_malformed(data: str) -> None:
    parsed = p.parse_server_event(data)
    assert isinstance(parsed, p.MalformedEvent)
    assert "not an object" in parsed.reason
    assert parsed.raw_excerpt == data


@pytest.mark.parametrize("data", ['{"event_id":"e"}', '{"type":null}', '{"type":5}', '{"type":["error"]}'])
def test_missing_or_non_string_type_is_malformed(data: str) -> None:
    parsed = p.parse_server_event(data)
    assert isinstance(parsed, p.MalformedEvent)
    assert "type" in parsed.reason


@pytest.mark.parametrize("delta", ["not base64!!", "AAE", "AA==AA==", "é", None, 12])
def test_bad_audio_delta_is_malformed(delta: Any) -> None:
    raw = _recorded("response.output_audio.delta")
    raw["delta"] = delta
    parsed = p.parse_server_event(json.dumps(raw))
    assert isinstance(parsed, p.MalformedEvent)
    assert parsed.reason.startswith("response.output_audio.delta: ")
    assert "'delta'" in parsed.reason


@pytest.mark.parametrize(
    ("event_type", "mutate", "mentions"),
    [
        ("input_audio_buffer.speech_started", lambda e: e.pop("item_id"), "'item_id'"),
        ("input_audio_buffer.speech_started", lambda e: e.update(audio_start_ms="1248"), "'audio_start_ms'"),
        ("input_audio_buffer.speech_stopped", lambda e: e.update(audio_end_ms=True), "'audio_end_ms'"),
        ("input_audio_buffer.speech_stopped", lambda e: e.update(audio_end_ms=4032.5), "'audio_end_ms'"),
        ("response.done", lambda e: e["response"].pop("id"), "'response.id' is required"),
        ("response.done", lambda e: e["response"].update(usage=[]), "'response.usage'"),
        (
            "response.done",
            lambda e: e["response"]["output"][0].pop("id"),
            "'response.output[0].id' is required",
        ),
        ("response.created", lambda e: e.update(response="resp_1"), "'response'"),
        ("conversation.item.done", lambda e: e["item"].pop("id"), "'item.id' is required"),
        ("conversation.item.done", lambda e: e["item"].update(content={}), "'item.content'"),
        ("response.function_call_arguments.done", lambda e: e.pop("arguments"), "'arguments'"),
        ("response.content_part.added", lambda e: e.update(part=None), "'part'"),
        ("rate_limits.updated", lambda e: e.pop("rate_limits"), "'rate_limits'"),
        (
            "rate_limits.updated",
            lambda e: e["rate_limits"][0].update(reset_seconds="soon"),
            "'rate_limits[0].reset_seconds'",
        ),
        ("error", lambda e: e.pop("error"), "'error'"),
        ("session.created", lambda e: e["session"].update(output_modalities=[1]), "output_modalities"),
        (
            "conversation.item.input_audio_transcription.completed",
            lambda e: e.pop("transcript"),
            "'transcript'",
        ),
    ],
)
def test_missing_or_mistyped_fields_are_malformed(
    event_type: str, mutate: Callable[[dict[str, Any]], object], mentions: str
) -> None:
    raw = _recorded(event_type)
    mutate(raw)
    parsed = p.parse_server_event(json.dumps(raw))
    assert isinstance(parsed, p.MalformedEvent)
    assert parsed.reason.startswith(f"{event_type}: ")
    assert mentions in parsed.reason


def test_lenient_where_dropping_the_event_would_hurt() -> None:
    error = _recorded("error")
    del error["error"]["message"], error["event_id"]
    parsed = p.parse_server_event(error)
    assert isinstance(parsed, p.ErrorEvent)
    assert (parsed.message, parsed.event_id, parsed.code) == ("", "", "invalid_value")

    done = _recorded("response.done")
    done["response"]["status"] = "paused_for_reflection"
    parsed_done = p.parse_server_event(done)
    assert isinstance(parsed_done, p.ResponseDone)
    assert parsed_done.status == "paused_for_reflection"


@pytest.mark.parametrize("data", [None, 42, 4.5, ["type"], object()])
def test_unsupported_input_types_are_malformed(data: Any) -> None:
    assert isinstance(p.parse_server_event(data), p.MalformedEvent)


def test_long_frames_are_excerpted() -> None:
    raw = _recorded("response.output_audio.delta")
    raw["delta"] = "A" * 100_000 + "!"
    text = json.dumps(raw)
    parsed = p.parse_server_event(text)
    assert isinstance(parsed, p.MalformedEvent)
    assert parsed.raw_excerpt == text[:200]


# --- property-style: mutated and truncated recordings never raise and never yield bad field types -----

SERVER_EVENT_CLASSES = typing.get_args(p.ServerEvent)
_WEIRD_VALUES: list[Any] = [None, 0, -1, 2**70, 1.5, math.inf, True, "", "x", [], {}, [None], {"type": 1}]


def _conforms(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is tuple:
        (element_hint, _ellipsis) = typing.get_args(hint)
        return isinstance(value, tuple) and all(_conforms(element, element_hint) for element in value)
    if origin is collections.abc.Mapping:
        return isinstance(value, collections.abc.Mapping)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float) and math.isfinite(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, hint) and _fields_conform(value)
    assert isinstance(hint, type), f"unexpected annotation {hint!r}"
    return isinstance(value, hint)


def _fields_conform(event: Any) -> bool:
    hints = typing.get_type_hints(type(event))
    return all(_conforms(getattr(event, f.name), hints[f.name]) for f in dataclasses.fields(event))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children: Any = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _edited(raw: dict[str, Any], path: tuple[Any, ...], new: Any, delete: bool = False) -> dict[str, Any]:
    edited = copy.deepcopy(raw)
    parent: Any = edited
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return edited


def _mutations(line: str, rng: random.Random) -> Iterator[object]:
    raw = json.loads(line)
    for cut in range(0, len(line), max(1, len(line) // 60)):
        yield line[:cut]
    for path in _paths(raw):
        yield _edited(raw, path, None, delete=True)
        for weird in _WEIRD_VALUES:
            yield _edited(raw, path, weird)
    for other_type in sorted(HANDLED_TYPES):
        yield {**raw, "type": other_type}  # every parser meets every other event's shape
    data = line.encode()
    for _ in range(40):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        yield bytes(flipped)


@pytest.mark.parametrize("line", RECORDED, ids=RECORDED_IDS)
def test_mutated_recordings_never_raise(line: str) -> None:
    rng = random.Random(line)
    count = 0
    for mutated in _mutations(line, rng):
        parsed = p.parse_server_event(mutated)
        count += 1
        assert isinstance(parsed, SERVER_EVENT_CLASSES), repr(parsed)
        if isinstance(parsed, p.MalformedEvent):
            assert not parsed.reason.startswith("internal"), parsed.reason
            assert len(parsed.raw_excerpt) <= 200
        else:
            assert _fields_conform(parsed), repr(parsed)
    assert count > 100


def test_type_checker_catches_a_wrong_field() -> None:
    # The property test relies on _fields_conform; make sure it can say no.
    assert not _fields_conform(p.SpeechStarted(True, "item", event_id="e"))
    assert not _fields_conform(p.RateLimitsUpdated((p.RateLimit("tokens", 1, 1, math.nan),), event_id="e"))
    assert not _fields_conform(p.ResponseCreated("resp", 3, event_id="e"))  # type: ignore[arg-type]
    assert _fields_conform(EXPECTED[20])


# ---------------------------------------------------------------------------------------------------
# UnknownTypeLog
# ---------------------------------------------------------------------------------------------------


def test_unknown_type_log_reports_each_type_once() -> None:
    log = p.UnknownTypeLog()
    assert log.first_time("conversation.item.created") is True
    assert log.first_time("conversation.item.created") is False
    assert log.first_time("mcp_list_tools.completed") is True
    assert log.first_time("conversation.item.created") is False


def test_unknown_type_log_is_bounded() -> None:
    log = p.UnknownTypeLog(max_types=3)
    assert [log.first_time(f"type.{n}") for n in range(5)] == [True, True, True, False, False]
    assert log.first_time("type.0") is False


TERMINAL_TRICKS = "\x1b[2J\x1b]0;owned\x07\r\x00\x9b31m\u202egnp.exe\u2066"


def test_server_text_arrives_without_control_characters() -> None:
    """Escape sequences, carriage returns and bidi overrides from a server never reach a screen."""
    error = p.parse_server_event(
        {
            "type": "error",
            "error": {"type": "x", "code": f"c{TERMINAL_TRICKS}", "message": f"m{TERMINAL_TRICKS}"},
        }
    )
    assert isinstance(error, p.ErrorEvent)
    assert error.message == "m[2J]0;owned31mgnp.exe"
    assert error.code == "c[2J]0;owned31mgnp.exe"
    delta = p.parse_server_event(
        {
            "type": "response.output_audio_transcript.delta",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": "Line one\n\tline two" + TERMINAL_TRICKS,
        }
    )
    assert isinstance(delta, p.ResponseOutputAudioTranscriptDelta)
    assert delta.delta == "Line one\n\tline two[2J]0;owned31mgnp.exe"  # tabs and line breaks stay
    unknown = p.parse_server_event({"type": f"made.up{TERMINAL_TRICKS}"})
    assert isinstance(unknown, p.UnknownEvent) and "\x1b" not in unknown.type
    malformed = p.parse_server_event(f'{{"type": "error" {TERMINAL_TRICKS}')
    assert isinstance(malformed, p.MalformedEvent)
    assert "\x1b" not in malformed.reason + malformed.raw_excerpt


def test_audio_is_not_touched_by_the_text_cleaning() -> None:
    pcm = bytes(range(256)) * 8
    event = p.parse_server_event(
        {
            "type": "response.output_audio.delta",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(pcm).decode(),
        }
    )
    assert isinstance(event, p.ResponseOutputAudioDelta) and event.audio == pcm


def test_microphone_appends_join_in_order_keeping_the_first_id() -> None:
    first = p.InputAudioBufferAppend(b"\x01\x00\x02\x00", event_id="evt_1")
    second = p.InputAudioBufferAppend(b"\x03\x00", event_id="evt_2")
    joined = p.joined_appends(first, second)
    assert joined.audio == b"\x01\x00\x02\x00\x03\x00" and joined.event_id == "evt_1"
