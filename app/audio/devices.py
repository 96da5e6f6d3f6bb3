"""Audio device listing and selection by index, exact name, or unique substring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["input", "output"]


class DeviceError(LookupError):
    """No device, or more than one, matches what the user asked for."""


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, direction: Direction) -> int:
        return self.max_input_channels if direction == "input" else self.max_output_channels


def match_device(
    devices: Sequence[AudioDevice], query: str | int | None, direction: Direction
) -> AudioDevice:
    """Pick one device for ``direction``.

    ``None`` means the system default; an int or digit string is an index; otherwise an exact
    name wins over a case-insensitive exact name, which wins over a unique case-insensitive
    substring (so ``vmic`` never resolves to ``vmic_feed``).
    """
    usable = [d for d in devices if d.channels(direction) > 0]
    if query is None:
        for device in usable:
            if (direction == "input" and device.is_default_input) or (
                direction == "output" and device.is_default_output
            ):
                return device
        if usable:
            return usable[0]
        raise DeviceError(f"no {direction} device is available")
    if isinstance(query, int) or (isinstance(query, str) and query.strip().isdigit()):
        index = int(query)
        for device in devices:
            if device.index == index:
                if device.channels(direction) == 0:
                    raise DeviceError(
                        f"device {index} ({device.name}) has no {direction} channels; "
                        f"{direction} devices: {_names(usable)}"
                    )
                return device
        raise DeviceError(f"no {direction} device has index {index}; {direction} devices: {_names(usable)}")
    text = query.strip()
    folded = text.casefold()
    for candidates in (
        [d for d in usable if d.name == text],
        [d for d in usable if d.name.casefold() == folded],
        [d for d in usable if folded in d.name.casefold()],
    ):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise DeviceError(
                f"{direction} device {text!r} is ambiguous, it matches: {_names(candidates)}; "
                "give the exact name or the index"
            )
    raise DeviceError(f"no {direction} device matches {text!r}; {direction} devices: {_names(usable)}")


def _names(devices: Sequence[AudioDevice]) -> str:
    if not devices:
        return "(none)"
    return ", ".join(f"[{d.index}] {d.name}" for d in devices)


def from_portaudio(
    raw_devices: Sequence[dict[str, Any]],
    host_apis: Sequence[dict[str, Any]],
    default_input: int,
    default_output: int,
) -> list[AudioDevice]:
    """Convert sounddevice's dictionaries into :class:`AudioDevice` records."""
    result = []
    for raw in raw_devices:
        index = int(raw["index"])
        api = host_apis[raw["hostapi"]]["name"] if 0 <= raw["hostapi"] < len(host_apis) else "?"
        result.append(
            AudioDevice(
                index=index,
                name=str(raw["name"]),
                host_api=str(api),
                max_input_channels=int(raw["max_input_channels"]),
                max_output_channels=int(raw["max_output_channels"]),
                default_samplerate=float(raw["default_samplerate"]),
                is_default_input=index == default_input,
                is_default_output=index == default_output,
            )
        )
    return result


def list_devices() -> list[AudioDevice]:
    """The devices PortAudio sees now."""
    import sounddevice as sd

    raw = [dict(d) for d in sd.query_devices()]
    default_in, default_out = sd.default.device
    if default_in is None or default_in < 0:
        default_in = _query_default("input")
    if default_out is None or default_out < 0:
        default_out = _query_default("output")
    return from_portaudio(raw, [dict(a) for a in sd.query_hostapis()], default_in, default_out)


def _query_default(kind: str) -> int:
    import sounddevice as sd

    try:
        return int(sd.query_devices(kind=kind)["index"])
    except (sd.PortAudioError, ValueError):
        return -1


def find_device(query: str | int | None, direction: Direction) -> AudioDevice:
    return match_device(list_devices(), query, direction)


def format_device_table(devices: Sequence[AudioDevice]) -> str:
    """The table ``helpdesk-voice devices`` prints; ``>`` / ``<`` mark the default input / output."""
    header = f"{'':2} {'idx':>3}  {'name':<32} {'host API':<14} {'in':>3} {'out':>3} {'rate':>7}"
    lines = [header]
    for d in devices:
        mark = ("<" if d.is_default_input else " ") + (">" if d.is_default_output else " ")
        lines.append(
            f"{mark} {d.index:>3}  {d.name:<32} {d.host_api:<14} {d.max_input_channels:>3} "
            f"{d.max_output_channels:>3} {d.default_samplerate:>7.0f}"
        )
    lines.append("< default input   > default output")
    return "\n".join(lines)
