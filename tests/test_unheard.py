"""The store of speech a lost connection may have taken: what it keeps, forgets and gives back."""

from __future__ import annotations

from app.core.unheard import BYTES_PER_SECOND, UnheardSpeech

FRAME = 960  # 20 ms of 24 kHz PCM16


def frame(n: int) -> bytes:
    return bytes([n % 256, 1]) * (FRAME // 2)


def test_silence_alone_is_not_given_back() -> None:
    store = UnheardSpeech()
    for n in range(20):
        store.add(frame(n), speech=False)
    assert not store.holds_speech
    assert store.take() == []
    assert store.seconds() == 0


def test_speech_is_given_back_once_with_what_came_around_it_in_order() -> None:
    store = UnheardSpeech()
    for n in range(10):
        store.add(frame(n), speech=5 <= n < 7)
    assert store.take() == [frame(n) for n in range(10)]
    assert store.take() == []


def test_committed_audio_is_kept_until_the_server_confirms_it() -> None:
    store = UnheardSpeech()
    store.add(frame(1), speech=True)
    store.committed()
    store.add(frame(2), speech=False)
    assert store.holds_speech  # the item dies with the session until confirmed
    store.confirmed()
    assert not store.holds_speech
    store.add(frame(3), speech=True)
    assert store.take() == [frame(2), frame(3)]


def test_newer_speech_survives_the_confirmation_of_an_older_request() -> None:
    store = UnheardSpeech()
    store.add(frame(1), speech=True)
    store.committed()
    store.add(frame(2), speech=True)  # the user talks over the answer to the first request
    store.confirmed()  # that answer is done (cancelled)
    assert store.take() == [frame(2)]


def test_only_the_newest_seconds_are_kept() -> None:
    store = UnheardSpeech(limit_s=1.0)
    frames = BYTES_PER_SECOND // FRAME
    for n in range(3 * frames):
        store.add(frame(n), speech=True)
    assert abs(store.seconds() - 1.0) < 0.03
    kept = store.take()
    assert kept[-1] == frame(3 * frames - 1) and len(kept) == frames
