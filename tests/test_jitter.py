from __future__ import annotations

import numpy as np
import pytest

from app.audio.jitter import JitterBuffer
from app.audio.resample import float_to_pcm16
from tests.conftest import sine

RATE = 24000
BLOCK = 240  # 10 ms


def pcm(ms: float, amplitude: float = 0.5, freq: float = 300.0) -> bytes:
    return float_to_pcm16(sine(freq, RATE, ms / 1000.0, amplitude))


def constant(ms: float, value: float = 0.5) -> bytes:
    return float_to_pcm16(np.full(int(RATE * ms / 1000), value, np.float32))


def render_blocks(buf: JitterBuffer, count: int, start: float = 0.0) -> np.ndarray:
    return np.concatenate([buf.render(BLOCK, start + i * BLOCK / RATE) for i in range(count)])


def test_waits_for_target_depth_before_starting() -> None:
    buf = JitterBuffer(RATE, target_ms=60)
    buf.push("a", pcm(40))
    assert not np.any(buf.render(BLOCK, 0.0))
    buf.push("a", pcm(40))
    assert np.any(buf.render(BLOCK, 0.01))


def test_short_finished_item_plays_without_waiting_for_target() -> None:
    buf = JitterBuffer(RATE, target_ms=60)
    buf.push("a", constant(30))
    buf.end_item("a")
    out = render_blocks(buf, 4)
    assert np.count_nonzero(out) == int(RATE * 0.030)
    assert buf.underruns == 0


def test_underrun_fades_out_counts_and_resumes_with_fade_in() -> None:
    buf = JitterBuffer(RATE, target_ms=20, fade_ms=5)
    buf.push("a", constant(25))
    out = render_blocks(buf, 3)  # 30 ms asked, 25 ms there
    assert buf.underruns == 1
    written = int(RATE * 0.025)
    tail = out[written - buf.fade_frames : written]
    assert tail[0] == pytest.approx(0.5, abs=1e-3) and tail[-1] == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.diff(tail) <= 1e-6)  # a ramp down, no step to zero
    assert not np.any(out[written:])
    # It waits for the target depth again, then fades in.
    buf.push("a", constant(10))
    assert not np.any(buf.render(BLOCK, 1.0))
    buf.push("a", constant(20))
    resumed = buf.render(BLOCK, 1.01)
    assert resumed[0] == pytest.approx(0.0, abs=1e-3)
    assert resumed[buf.fade_frames] == pytest.approx(0.5, abs=1e-3)
    assert np.all(np.diff(resumed[: buf.fade_frames]) >= -1e-6)


def test_end_of_an_item_is_not_an_underrun() -> None:
    buf = JitterBuffer(RATE, target_ms=20)
    buf.push("a", constant(35))
    buf.end_item("a")
    render_blocks(buf, 10)
    assert buf.underruns == 0
    assert not buf.is_active()


def test_overflow_drops_and_counts() -> None:
    buf = JitterBuffer(RATE, target_ms=20, max_ms=100)
    assert buf.push("a", pcm(80))
    assert not buf.push("a", pcm(40))
    assert buf.overflows == 1
    assert buf.account("a").received_ms == pytest.approx(80)  # type: ignore[union-attr]


def test_per_item_accounting_back_to_back() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(30, 0.2))
    buf.end_item("a")
    buf.push("b", constant(50, 0.4))
    buf.end_item("b")
    out = render_blocks(buf, 10)
    assert np.count_nonzero(np.isclose(out, 0.2, atol=1e-4)) == 720
    assert np.count_nonzero(np.isclose(out, 0.4, atol=1e-4)) == 1200
    a, b = buf.account("a"), buf.account("b")
    assert a is not None and b is not None
    assert (a.handed_frames, b.handed_frames) == (720, 1200)
    assert a.done and b.done


def test_played_ms_accounts_for_output_latency_and_never_exceeds_the_item() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.output_latency = 0.040
    buf.push("a", constant(100))
    buf.end_item("a")
    buf.render(BLOCK, 10.0)  # 10 ms handed at t=10.0, heard from 10.04 to 10.05
    assert buf.played_ms("a", 10.0) == pytest.approx(0.0)
    assert buf.played_ms("a", 10.045) == pytest.approx(5.0, abs=0.1)
    assert buf.played_ms("a", 11.0) == pytest.approx(10.0)
    for i in range(1, 20):
        buf.render(BLOCK, 10.0 + i * 0.01)
    assert buf.played_ms("a", 20.0) == pytest.approx(100.0)
    assert buf.played_ms("unknown", 20.0) == 0.0


def test_played_ms_is_clamped_to_received_audio_with_resampling() -> None:
    buf = JitterBuffer(44100, target_ms=0)
    buf.push("a", pcm(123))
    buf.end_item("a")
    for i in range(30):
        buf.render(441, i * 0.01)
        assert buf.played_ms("a", i * 0.01 + 1) <= 123.0
    assert buf.played_ms("a", 100.0) == pytest.approx(123.0, abs=0.5)


def test_halt_silences_from_next_block_with_a_fade_and_records_position() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=4)
    buf.push("a", constant(500))
    render_blocks(buf, 5)  # 50 ms played
    assert buf.is_active()
    buf.halt()
    block = buf.render(BLOCK, 1.0)
    fade = buf.fade_frames
    assert block[0] == pytest.approx(0.5, abs=1e-3)
    assert np.all(np.diff(block[:fade]) <= 1e-6)
    assert abs(block[fade - 1]) < 0.01
    assert not np.any(block[fade:])
    assert not np.any(render_blocks(buf, 5, 2.0))
    record = buf.halts[-1]
    assert record.played_ms == {"a": pytest.approx(54.0)}  # 50 ms plus the 4 ms fade
    assert record.processed_at == 1.0
    assert not buf.is_active()
    assert not buf.push("a", constant(100))  # late deltas of the halted item are dropped
    buf.end_item("a")
    assert not np.any(render_blocks(buf, 3, 3.0))


def test_new_item_plays_normally_after_a_halt() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    render_blocks(buf, 2)
    buf.halt()
    buf.render(BLOCK, 1.0)
    assert buf.push("b", constant(30, 0.3))
    buf.end_item("b")
    out = render_blocks(buf, 4, 2.0)
    assert np.count_nonzero(np.isclose(out, 0.3, atol=1e-4)) == 720


def test_halt_cuts_only_items_active_when_it_was_asked() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    buf.halt()
    buf.push("b", constant(20, 0.3))  # arrives after the halt, before the callback ran
    buf.end_item("b")
    first = buf.render(BLOCK, 0.0)
    assert not np.any(first)
    out = render_blocks(buf, 3, 0.01)
    assert np.count_nonzero(np.isclose(out, 0.3, atol=1e-4)) == 480
    assert buf.halts[-1].played_ms == {"a": 0.0}


def test_halt_while_still_buffering_hands_nothing() -> None:
    buf = JitterBuffer(RATE, target_ms=60)
    buf.push("a", constant(30))
    buf.halt()
    assert not np.any(buf.render(BLOCK, 0.0))
    assert buf.halts[-1].played_ms == {"a": 0.0}


def test_halt_with_nothing_playing_cuts_nothing() -> None:
    buf = JitterBuffer(RATE)
    buf.halt()
    buf.render(BLOCK, 0.0)
    assert buf.halts[-1].played_ms == {}
    buf.push("a", constant(100))
    buf.end_item("a")
    assert np.any(render_blocks(buf, 10))


def test_first_audible_sample_time_is_recorded() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(20, 0.0) + constant(20, 0.3))
    buf.end_item("a")
    render_blocks(buf, 5, start=7.0)
    account = buf.account("a")
    assert account is not None and account.first_audible_at == pytest.approx(7.02)


def test_halt_of_one_item_leaves_the_others_playing() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("cue", constant(100, 0.1))
    buf.end_item("cue")
    buf.push("answer", constant(100, 0.4))
    buf.end_item("answer")
    render_blocks(buf, 2)  # 20 ms of the cue
    buf.halt(["cue", "not-there"])
    out = render_blocks(buf, 12, 1.0)
    assert buf.halts[-1].played_ms == {"cue": pytest.approx(25.0)}  # 20 ms + the 5 ms fade
    # The answer starts on the block after the cue's fade and plays whole.
    assert np.count_nonzero(np.isclose(out, 0.4, atol=1e-4)) == 2400


def counter(first: int, count: int) -> bytes:
    """PCM16 whose sample values are consecutive integers: each sample says where it came from."""
    return np.arange(first, first + count, dtype="<i2").tobytes()


def as_counts(block: np.ndarray) -> np.ndarray:
    return np.rint(block * 32768.0).astype(np.int64)


def test_pause_fades_then_silence_and_records_what_was_heard() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=4)
    buf.output_latency = 0.020
    buf.push("a", constant(500))
    render_blocks(buf, 5)  # 50 ms played
    buf.pause()
    assert buf.paused
    block = buf.render(BLOCK, 1.0)
    fade = buf.fade_frames
    assert block[0] == pytest.approx(0.5, abs=1e-3)
    assert np.all(np.diff(block[:fade]) <= 1e-6)
    assert abs(block[fade - 1]) < 0.01
    assert not np.any(block[fade:])
    assert not np.any(render_blocks(buf, 5, 2.0))
    assert buf.paused
    record = buf.pauses[-1]
    assert record.played_ms == {"a": pytest.approx(54.0)}  # 50 ms plus the 4 ms fade
    assert record.processed_at == 1.0
    assert record.silent_at == pytest.approx(1.0 + 0.020 + fade / RATE)
    assert len(buf.halts) == 0
    account = buf.account("a")
    assert account is not None and not account.halted and not account.done
    assert account.handed_frames == 1200 + fade
    assert account.queued_frames == 12000 - 1200 - fade
    assert buf.underruns == 0


def test_audio_pushed_while_paused_is_kept_and_new_items_wait() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(100, 0.2))
    render_blocks(buf, 2)
    buf.pause()
    buf.render(BLOCK, 1.0)
    queued = buf.queued_ms
    assert buf.push("a", constant(50, 0.2))
    buf.end_item("a")
    assert buf.push("b", constant(40, 0.4))
    buf.end_item("b")
    assert buf.queued_ms == pytest.approx(queued + 90.0)
    assert not np.any(render_blocks(buf, 10, 2.0))
    buf.resume()
    out = render_blocks(buf, 20, 3.0)
    fade = buf.fade_frames
    # All of a's rest (less the faded-in start) and then all of b.
    a_rest = 3600 - 480 - fade
    assert np.count_nonzero(np.isclose(out, 0.2, atol=1e-4)) == a_rest - fade
    assert np.count_nonzero(np.isclose(out, 0.4, atol=1e-4)) == 960
    assert np.flatnonzero(np.isclose(out, 0.4, atol=1e-4))[0] == a_rest


def test_resume_continues_with_the_next_sample_after_a_fade_in() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=5)
    buf.push("a", counter(1, 24000))
    render_blocks(buf, 3)  # samples 1..720
    buf.pause()
    paused_block = as_counts(buf.render(BLOCK, 1.0))
    fade = buf.fade_frames
    assert paused_block[0] == 721  # the fade starts on the next sample, full level
    assert not np.any(paused_block[fade:])
    assert not np.any(render_blocks(buf, 5, 2.0))
    assert buf.underruns == 0
    buf.resume()
    assert not buf.paused
    resumed = buf.render(BLOCK, 3.0)
    expected = np.arange(721 + fade, 721 + fade + BLOCK)
    np.testing.assert_array_equal(as_counts(resumed[fade:]), expected[fade:])
    gain = np.linspace(0.0, 1.0, fade, endpoint=False)
    np.testing.assert_allclose(resumed[:fade], expected[:fade] / 32768.0 * gain, atol=1e-5)
    assert as_counts(buf.render(BLOCK, 3.01))[0] == expected[-1] + 1
    assert buf.underruns == 0


def test_resume_waits_for_the_target_depth_when_the_queue_is_thin() -> None:
    buf = JitterBuffer(RATE, target_ms=60, fade_ms=5)
    buf.push("a", constant(80))
    render_blocks(buf, 3)  # 30 ms played, 50 ms left
    buf.pause()
    buf.render(BLOCK, 1.0)  # the 5 ms fade: 45 ms left, under the target
    buf.resume()
    assert not np.any(render_blocks(buf, 3, 2.0))
    assert buf.underruns == 0
    buf.push("a", constant(20))
    resumed = buf.render(BLOCK, 3.0)
    assert resumed[0] == pytest.approx(0.0, abs=1e-3)
    assert resumed[buf.fade_frames] == pytest.approx(0.5, abs=1e-3)


def test_resume_before_the_pause_is_processed_cancels_it() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    render_blocks(buf, 2)
    buf.pause()
    buf.resume()
    assert not buf.paused
    block = buf.render(BLOCK, 1.0)
    np.testing.assert_allclose(block, 0.5, atol=1e-4)  # no fade out, no fade in
    assert len(buf.pauses) == 0


def test_resume_when_not_paused_does_nothing() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    render_blocks(buf, 2)
    buf.resume()
    np.testing.assert_allclose(buf.render(BLOCK, 1.0), 0.5, atol=1e-4)


def test_halt_while_paused_drops_the_audio_and_reports_the_pause_position() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=4)
    buf.output_latency = 0.030
    buf.push("a", constant(500))
    render_blocks(buf, 5)
    buf.pause()
    buf.render(BLOCK, 1.0)
    paused_at = buf.pauses[-1]
    assert buf.push("a", constant(100))
    buf.halt()
    assert buf.paused  # until a render processes the halt
    assert not np.any(buf.render(BLOCK, 2.0))  # already silent: no second fade
    record = buf.halts[-1]
    assert record.processed_at == 2.0
    assert record.silent_at == paused_at.silent_at
    assert record.played_ms == paused_at.played_ms == {"a": pytest.approx(54.0)}
    assert not buf.paused
    assert not buf.is_active()
    account = buf.account("a")
    assert account is not None and account.halted and account.queued_frames == 0
    assert buf.queued_ms == 0.0
    assert not buf.push("a", constant(100))
    buf.resume()
    assert not np.any(render_blocks(buf, 10, 3.0))


def test_halt_of_one_item_while_paused_lets_the_others_play_on_with_a_fade_in() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=5)
    buf.push("answer", constant(200, 0.4))
    render_blocks(buf, 2)
    buf.pause()
    buf.render(BLOCK, 1.0)
    assert buf.push("cue", constant(50, 0.1))
    buf.end_item("cue")
    buf.halt(["cue"])
    assert not np.any(buf.render(BLOCK, 2.0))
    assert buf.halts[-1].played_ms == {"cue": 0.0}
    assert not buf.paused
    assert buf.is_active()
    block = buf.render(BLOCK, 2.01)
    assert block[0] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(block[buf.fade_frames :], 0.4, atol=1e-4)
    rest = render_blocks(buf, 20, 3.0)
    assert not np.any(np.isclose(rest, 0.1, atol=1e-4))


def test_halt_with_a_pause_pending_is_a_plain_halt() -> None:
    buf = JitterBuffer(RATE, target_ms=0, fade_ms=4)
    buf.push("a", constant(500))
    render_blocks(buf, 5)
    buf.pause()
    buf.halt()
    block = buf.render(BLOCK, 1.0)
    assert block[0] == pytest.approx(0.5, abs=1e-3)  # the halt's own fade
    assert not np.any(block[buf.fade_frames :])
    assert buf.halts[-1].played_ms == {"a": pytest.approx(54.0)}
    assert len(buf.pauses) == 0
    assert not buf.paused


def test_pause_with_nothing_playing_does_nothing() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.pause()
    assert not buf.paused
    buf.push("a", constant(20))
    buf.end_item("a")
    render_blocks(buf, 3)
    buf.pause()  # "a" has ended and played out
    assert not buf.paused
    buf.render(BLOCK, 1.0)
    assert len(buf.pauses) == 0
    buf.push("b", constant(30, 0.3))
    buf.end_item("b")
    out = render_blocks(buf, 4, 2.0)
    assert np.count_nonzero(np.isclose(out, 0.3, atol=1e-4)) == 720


def test_is_active_is_false_while_paused_and_true_again_after_resume() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    render_blocks(buf, 2)
    assert buf.is_active()
    buf.pause()
    assert not buf.is_active()  # already before the render processed it
    buf.render(BLOCK, 1.0)
    assert not buf.is_active()
    buf.resume()
    assert buf.is_active()
    assert np.any(buf.render(BLOCK, 2.0))


def test_end_item_while_paused_then_resume_plays_the_tail_and_ends() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", counter(1, 2400))
    render_blocks(buf, 2)
    buf.pause()
    buf.render(BLOCK, 1.0)
    assert buf.push("a", counter(2401, 480))
    buf.end_item("a")
    assert not np.any(render_blocks(buf, 3, 2.0))
    account = buf.account("a")
    assert account is not None and account.ended and not account.done
    buf.resume()
    out = as_counts(render_blocks(buf, 30, 3.0))
    fade = buf.fade_frames
    handed_before = 480 + fade
    last = np.flatnonzero(out)[-1]
    assert last == 2880 - handed_before - 1  # no gap, no repeat
    assert out[last] == 2880  # the tail pushed while paused played to the end
    np.testing.assert_array_equal(out[fade : 2880 - handed_before], np.arange(handed_before + fade + 1, 2881))
    account = buf.account("a")
    assert account is not None and account.done and not account.halted
    assert account.handed_frames == 2880
    assert not buf.is_active()
    assert buf.underruns == 0


def test_clear_ends_a_pause() -> None:
    buf = JitterBuffer(RATE, target_ms=0)
    buf.push("a", constant(200))
    render_blocks(buf, 2)
    buf.pause()
    buf.render(BLOCK, 1.0)
    buf.clear()
    assert not buf.paused
    buf.push("b", constant(30, 0.3))
    buf.end_item("b")
    out = render_blocks(buf, 4, 2.0)
    assert np.count_nonzero(np.isclose(out, 0.3, atol=1e-4)) == 720  # whole, without a fade-in
