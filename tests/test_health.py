"""The engine's device and connection health decisions, without devices or sockets."""

from __future__ import annotations

from app.core.health import (
    ConnectionFailures,
    DeviceHealth,
    DeviceStep,
    device_back_notice,
    device_lost_notice,
)


def test_a_lost_device_is_reported_once_retried_every_few_seconds_and_reported_back() -> None:
    health = DeviceHealth(retry_s=3.0)
    assert health.check("microphone", lost=False, delivering=True, now=0.0) is DeviceStep.NOTHING
    assert health.check("microphone", lost=True, delivering=False, now=1.0) is DeviceStep.LOST
    assert health.lost_roles() == {"microphone"}
    # Still lost: never reported again, reopened 3 s after the loss, then 3 s after each try.
    steps = [
        health.check("microphone", lost=True, delivering=False, now=t) for t in (1.5, 3.9, 4.0, 6.5, 7.0)
    ]
    assert steps == [
        DeviceStep.NOTHING,
        DeviceStep.NOTHING,
        DeviceStep.REOPEN,
        DeviceStep.NOTHING,
        DeviceStep.REOPEN,
    ]
    assert health.check("microphone", lost=False, delivering=True, now=7.2) is DeviceStep.BACK
    assert health.lost_roles() == frozenset()
    assert health.check("microphone", lost=False, delivering=True, now=8.0) is DeviceStep.NOTHING


def test_each_role_is_watched_on_its_own() -> None:
    health = DeviceHealth()
    assert health.check("speaker", lost=True, delivering=False, now=0.0) is DeviceStep.LOST
    assert health.check("microphone", lost=False, delivering=True, now=0.0) is DeviceStep.NOTHING
    assert health.check("microphone", lost=True, delivering=False, now=1.0) is DeviceStep.LOST
    assert health.lost_roles() == {"speaker", "microphone"}


def test_a_reopened_stream_that_delivers_nothing_yet_is_not_back() -> None:
    health = DeviceHealth(retry_s=1.0)
    health.check("speaker", lost=True, delivering=False, now=0.0)
    assert health.check("speaker", lost=False, delivering=False, now=1.0) is DeviceStep.REOPEN
    assert health.check("speaker", lost=False, delivering=False, now=1.5) is DeviceStep.NOTHING


def test_the_notices_name_the_device_and_what_to_do() -> None:
    lost = device_lost_notice("microphone", "USB headset")
    assert lost.level == "error" and lost.needs_user
    assert "USB headset" in lost.message and "Settings" in lost.message
    back = device_back_notice("speaker", "Speakers")
    assert back.level == "info" and not back.needs_user and "Speakers" in back.message


def test_the_endpoint_is_unreachable_at_the_third_failure_in_a_row_only() -> None:
    failures = ConnectionFailures(unreachable_after=3)
    assert [failures.failed() for _ in range(4)] == [False, False, True, False]
    failures.connected()
    assert [failures.failed() for _ in range(3)] == [False, False, True]
