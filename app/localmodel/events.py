"""Server events of the OpenAI Realtime protocol (GA), as the embedded server sends them.

Plain dicts, shaped like the events OpenAI's servers send, so every client that talks to OpenAI
talks to the embedded server unchanged. The tests validate each one against the ``openai``
package's ``RealtimeServerEvent`` types.
"""

from __future__ import annotations

import base64
import itertools
import math
import secrets
from typing import Any, Literal

Event = dict[str, Any]

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    """Ids like OpenAI's: a prefix and a random part (``item_``, ``resp_``, ``call_``, ``event_``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def _event(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": f"event_{next(_counter):06d}{secrets.token_hex(4)}", **fields}


# -- session ---------------------------------------------------------------------------------


def session_created(session: dict[str, Any]) -> Event:
    return _event("session.created", session=session)


def session_updated(session: dict[str, Any]) -> Event:
    return _event("session.updated", session=session)


def error(
    message: str,
    code: str,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    client_event_id: str | None = None,
) -> Event:
    detail: dict[str, Any] = {"type": error_type, "code": code, "message": message, "param": param}
    detail["event_id"] = client_event_id
    return _event("error", error=detail)


# -- input audio -----------------------------------------------------------------------------


def speech_started(item_id: str, audio_start_ms: int) -> Event:
    return _event("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)


def speech_stopped(item_id: str, audio_end_ms: int) -> Event:
    return _event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)


def committed(item_id: str, previous_item_id: str | None) -> Event:
    return _event("input_audio_buffer.committed", previous_item_id=previous_item_id, item_id=item_id)


def cleared() -> Event:
    return _event("input_audio_buffer.cleared")


def transcription_delta(item_id: str, delta: str) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta
    )


def transcription_completed(item_id: str, transcript: str) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=0,
        transcript=transcript,
        usage={"type": "duration", "seconds": 0.0},
    )


def transcription_failed(item_id: str, message: str) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=0,
        error={
            "type": "transcription_error",
            "code": "transcription_failed",
            "message": message,
            "param": None,
        },
    )


# -- conversation items ----------------------------------------------------------------------


def item_added(item: dict[str, Any], previous_item_id: str | None) -> Event:
    return _event("conversation.item.added", previous_item_id=previous_item_id, item=item)


def item_done(item: dict[str, Any], previous_item_id: str | None) -> Event:
    return _event("conversation.item.done", previous_item_id=previous_item_id, item=item)


def item_retrieved(item: dict[str, Any]) -> Event:
    return _event("conversation.item.retrieved", item=item)


def item_deleted(item_id: str) -> Event:
    return _event("conversation.item.deleted", item_id=item_id)


def item_truncated(item_id: str, content_index: int, audio_end_ms: int) -> Event:
    return _event(
        "conversation.item.truncated", item_id=item_id, content_index=content_index, audio_end_ms=audio_end_ms
    )


def user_audio_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "user",
        "object": "realtime.item",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


ItemStatus = Literal["in_progress", "completed", "incomplete"]


def _assistant_item(item_id: str, status: ItemStatus, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "object": "realtime.item",
        "content": content,
    }


def assistant_audio_item(item_id: str, transcript: str | None, status: ItemStatus) -> dict[str, Any]:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return _assistant_item(item_id, status, content)


def assistant_text_item(item_id: str, text: str | None, status: ItemStatus) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text}]
    return _assistant_item(item_id, status, content)


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: Literal["in_progress", "completed"]
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "object": "realtime.item",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


# -- responses -------------------------------------------------------------------------------

Modalities = tuple[Literal["audio", "text"], ...]

# ``usage`` is an estimate: the embedded server runs no token-based model. Text counts one token per
# four characters (OpenAI's rule of thumb for English, rounded up); audio counts by its length at
# the rates OpenAI documents for realtime audio: one token per 100 ms of the user's audio, one per
# 50 ms of the assistant's.
CHARS_PER_TOKEN = 4
INPUT_AUDIO_TOKENS_PER_S = 10
OUTPUT_AUDIO_TOKENS_PER_S = 20


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def audio_tokens(audio_ms: float, per_second: int) -> int:
    return math.ceil(max(0.0, audio_ms) * per_second / 1000.0)


def response_usage(
    input_text: str, input_audio_ms: float, output_text: str, output_audio_ms: float
) -> dict[str, Any]:
    """The GA ``usage`` object of a response, estimated (see :data:`CHARS_PER_TOKEN`)."""
    text_in, audio_in = text_tokens(input_text), audio_tokens(input_audio_ms, INPUT_AUDIO_TOKENS_PER_S)
    text_out, audio_out = text_tokens(output_text), audio_tokens(output_audio_ms, OUTPUT_AUDIO_TOKENS_PER_S)
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": 0},
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def _response(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    details: dict[str, Any] | None,
    voice: str,
    modalities: Modalities = ("audio",),
    metadata: dict[str, str] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": "conv_embedded",
        "output_modalities": list(modalities),
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice}},
        "usage": usage,
        "metadata": metadata,
    }


def response_created(
    response_id: str,
    voice: str,
    *,
    modalities: Modalities = ("audio",),
    metadata: dict[str, str] | None = None,
) -> Event:
    response = _response(response_id, "in_progress", [], None, voice, modalities, metadata)
    return _event("response.created", response=response)


def response_done(
    response_id: str,
    output: list[dict[str, Any]],
    voice: str,
    cancelled_because: Literal["turn_detected", "client_cancelled"] | None = None,
    *,
    modalities: Modalities = ("audio",),
    metadata: dict[str, str] | None = None,
    usage: dict[str, Any] | None = None,
) -> Event:
    status, details = "completed", None
    if cancelled_because is not None:
        status, details = "cancelled", {"type": "cancelled", "reason": cancelled_because}
    response = _response(response_id, status, output, details, voice, modalities, metadata, usage)
    return _event("response.done", response=response)


def output_item_added(response_id: str, output_index: int, item: dict[str, Any]) -> Event:
    return _event("response.output_item.added", response_id=response_id, output_index=output_index, item=item)


def output_item_done(response_id: str, output_index: int, item: dict[str, Any]) -> Event:
    return _event("response.output_item.done", response_id=response_id, output_index=output_index, item=item)


def _part_of(response_id: str, item_id: str, output_index: int) -> dict[str, Any]:
    return {"response_id": response_id, "item_id": item_id, "output_index": output_index, "content_index": 0}


def _part(text: str, text_only: bool) -> dict[str, Any]:
    return {"type": "text", "text": text} if text_only else {"type": "audio", "transcript": text}


def content_part_added(response_id: str, item_id: str, output_index: int, text_only: bool = False) -> Event:
    return _event(
        "response.content_part.added",
        part=_part("", text_only),
        **_part_of(response_id, item_id, output_index),
    )


def content_part_done(
    response_id: str, item_id: str, output_index: int, transcript: str, text_only: bool = False
) -> Event:
    return _event(
        "response.content_part.done",
        part=_part(transcript, text_only),
        **_part_of(response_id, item_id, output_index),
    )


def text_delta(response_id: str, item_id: str, output_index: int, delta: str) -> Event:
    return _event("response.output_text.delta", delta=delta, **_part_of(response_id, item_id, output_index))


def text_done(response_id: str, item_id: str, output_index: int, text: str) -> Event:
    return _event("response.output_text.done", text=text, **_part_of(response_id, item_id, output_index))


def audio_delta(response_id: str, item_id: str, output_index: int, pcm16: bytes) -> Event:
    return _event(
        "response.output_audio.delta",
        delta=base64.b64encode(pcm16).decode("ascii"),
        **_part_of(response_id, item_id, output_index),
    )


def audio_done(response_id: str, item_id: str, output_index: int) -> Event:
    return _event("response.output_audio.done", **_part_of(response_id, item_id, output_index))


def transcript_delta(response_id: str, item_id: str, output_index: int, delta: str) -> Event:
    return _event(
        "response.output_audio_transcript.delta", delta=delta, **_part_of(response_id, item_id, output_index)
    )


def transcript_done(response_id: str, item_id: str, output_index: int, transcript: str) -> Event:
    return _event(
        "response.output_audio_transcript.done",
        transcript=transcript,
        **_part_of(response_id, item_id, output_index),
    )


def arguments_delta(response_id: str, item_id: str, output_index: int, call_id: str, delta: str) -> Event:
    return _event(
        "response.function_call_arguments.delta",
        response_id=response_id,
        item_id=item_id,
        output_index=output_index,
        call_id=call_id,
        delta=delta,
    )


def arguments_done(
    response_id: str, item_id: str, output_index: int, call_id: str, name: str, arguments: str
) -> Event:
    return _event(
        "response.function_call_arguments.done",
        response_id=response_id,
        item_id=item_id,
        output_index=output_index,
        call_id=call_id,
        name=name,
        arguments=arguments,
    )
