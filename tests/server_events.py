"""GA server events as a realtime server sends them, for scripted peers and state-machine tests."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

Event = dict[str, Any]
_counter = iter(range(1, 10**9))


def _event(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": f"event_{next(_counter)}", **fields}


def pcm(ms: float, amplitude: float = 0.3, freq: float = 220.0) -> bytes:
    t = np.arange(int(24 * ms)) / 24000
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def session_created(session_id: str = "sess_1") -> Event:
    return _event(
        "session.created", session={"type": "realtime", "id": session_id, "object": "realtime.session"}
    )


def speech_started(item_id: str, audio_start_ms: int = 0) -> Event:
    return _event("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)


def speech_stopped(item_id: str, audio_end_ms: int = 1000) -> Event:
    return _event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)


def committed(item_id: str) -> Event:
    return _event("input_audio_buffer.committed", previous_item_id=None, item_id=item_id)


def user_transcript(item_id: str, text: str) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=0,
        transcript=text,
    )


def response_created(response_id: str) -> Event:
    return _event(
        "response.created",
        response={"object": "realtime.response", "id": response_id, "status": "in_progress", "output": []},
    )


def item_added(response_id: str, item_id: str, output_index: int = 0) -> Event:
    item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    return _event("response.output_item.added", response_id=response_id, output_index=output_index, item=item)


def _part(response_id: str, item_id: str, output_index: int) -> Event:
    return {"response_id": response_id, "item_id": item_id, "output_index": output_index, "content_index": 0}


def audio_delta(response_id: str, item_id: str, audio: bytes, output_index: int = 0) -> Event:
    delta = base64.b64encode(audio).decode()
    return _event("response.output_audio.delta", delta=delta, **_part(response_id, item_id, output_index))


def audio_done(response_id: str, item_id: str, output_index: int = 0) -> Event:
    return _event("response.output_audio.done", **_part(response_id, item_id, output_index))


def transcript_delta(response_id: str, item_id: str, text: str, output_index: int = 0) -> Event:
    return _event(
        "response.output_audio_transcript.delta", delta=text, **_part(response_id, item_id, output_index)
    )


def transcript_done(response_id: str, item_id: str, text: str, output_index: int = 0) -> Event:
    return _event(
        "response.output_audio_transcript.done", transcript=text, **_part(response_id, item_id, output_index)
    )


def arguments_done(response_id: str, item_id: str, call_id: str, name: str, arguments: str) -> Event:
    return _event(
        "response.function_call_arguments.done",
        response_id=response_id,
        item_id=item_id,
        output_index=0,
        call_id=call_id,
        name=name,
        arguments=arguments,
    )


def response_done(response_id: str, status: str = "completed", reason: str | None = None) -> Event:
    details = None if reason is None else {"type": status, "reason": reason}
    response: Event = {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": [],
    }
    return _event("response.done", response=response)


def error(code: str, message: str) -> Event:
    return _event("error", error={"type": "invalid_request_error", "code": code, "message": message})


def spoken_answer(response_id: str, item_id: str, text: str, audio_ms: float, chunks: int = 4) -> list[Event]:
    """A whole assistant answer: created, item, transcript and audio in chunks, done."""
    events = [response_created(response_id), item_added(response_id, item_id)]
    words = text.split(" ")
    for i in range(chunks):
        part = " ".join(words[i * len(words) // chunks : (i + 1) * len(words) // chunks])
        events.append(transcript_delta(response_id, item_id, part + (" " if i < chunks - 1 else "")))
        events.append(audio_delta(response_id, item_id, pcm(audio_ms / chunks)))
    events += [
        transcript_done(response_id, item_id, text),
        audio_done(response_id, item_id),
        response_done(response_id),
    ]
    return events
