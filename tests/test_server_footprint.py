"""The footprint benchmark's readers (bench/server_footprint.py): the server's progress lines cut
into stages, ``-X importtime`` output ranked, /proc smaps grouped by mapping. Synthetic input only;
the benchmark itself measures."""

from __future__ import annotations

from bench.server_footprint import (
    AFTER_LOADING_STAGE,
    BETWEEN_STEPS_STAGE,
    IMPORTS_STAGE,
    Line,
    heaviest_imports,
    import_total_us,
    mapping_group,
    rss_by_mapping,
    stages,
)

MB = 1024  # kB


def by_name(lines: list[Line]) -> dict[str, tuple[float, float, float | None]]:
    return {stage.name: (stage.starts_at_s, stage.seconds, stage.rss_added_mb) for stage in stages(lines)}


def test_steps_one_after_another_are_timed_with_the_memory_each_added() -> None:
    lines = [
        Line(0.3, "helpdesk-voice embedded server", 50 * MB),
        Line(0.35, "loading speech recognition (Whisper tiny.en)...", 52 * MB),
        Line(0.6, "loading speech recognition (Whisper tiny.en): done in 0.3 s", 140 * MB),
        Line(0.7, "loading voice (Piper)...", 141 * MB),
        Line(1.7, "loading voice (Piper): done in 1.0 s", 250 * MB),
        Line(1.75, "loaded in 1.4 s", 240 * MB),
        Line(1.76, "url: ws://127.0.0.1:1234/v1/realtime", 240 * MB),
        Line(1.77, "token: from HELPDESK_VOICE_SERVER_TOKEN", 240 * MB),
        Line(1.78, "ready", 241 * MB),
        Line(9.0, "after ready: not part of start-up", 300 * MB),
    ]
    found = by_name(lines)
    assert list(found) == [
        IMPORTS_STAGE,
        "speech recognition (Whisper tiny.en)",
        "voice (Piper)",
        BETWEEN_STEPS_STAGE,
        AFTER_LOADING_STAGE,
    ]
    assert found[IMPORTS_STAGE] == (0.0, 0.3, 50.0)
    assert found["speech recognition (Whisper tiny.en)"] == (0.35, 0.25, 88.0)
    assert found["voice (Piper)"] == (0.7, 1.0, 109.0)
    # 1.45 s from the first line to "loaded", 1.25 s of it in steps; memory: 190 MB grown, 197 in steps.
    starts, seconds, added = found[BETWEEN_STEPS_STAGE]
    assert (starts, round(seconds, 3), added) == (0.3, 0.2, -7.0)
    assert found[AFTER_LOADING_STAGE] == (1.75, 0.03, 1.0)
    assert not any(stage.side_by_side for stage in stages(lines))


def test_overlapping_steps_keep_their_own_spans_and_leave_the_rest_unattributed() -> None:
    lines = [
        Line(0.3, "helpdesk-voice embedded server", 50 * MB),
        Line(0.3, "loading voice (Piper)...", 50 * MB),
        Line(0.31, "loading speech recognition (Whisper tiny.en)...", 51 * MB),
        Line(0.6, "loading speech recognition (Whisper tiny.en): done in 0.3 s", 150 * MB),
        Line(1.3, "loading voice (Piper): done in 1.0 s", 300 * MB),
        Line(1.3, "loading end-of-turn model (Smart Turn v3)...", 300 * MB),
        Line(
            1.32, "loading end-of-turn model: unavailable, turns end by their words and pauses (x)", 300 * MB
        ),
        Line(1.4, "loaded in 1.1 s", 290 * MB),
        Line(1.4, "ready", 290 * MB),
    ]
    found = by_name(lines)
    # What the two steps loading side by side each added cannot be told apart.
    assert found["voice (Piper)"] == (0.3, 1.0, None)
    assert found["speech recognition (Whisper tiny.en)"] == (0.31, 0.29, None)
    assert found["end-of-turn model (Smart Turn v3) (unavailable)"] == (1.3, 0.02, 0.0)
    together = {stage.name for stage in stages(lines) if stage.side_by_side}
    assert together == {"voice (Piper)", "speech recognition (Whisper tiny.en)"}
    starts, seconds, added = found[BETWEEN_STEPS_STAGE]
    # 1.1 s from the first line to "loaded": 1.02 s inside the steps' union; memory not attributable.
    assert (starts, round(seconds, 3), added) == (0.3, 0.08, None)


def test_a_start_that_never_got_ready_has_only_what_happened() -> None:
    lines = [Line(0.3, "helpdesk-voice embedded server", None), Line(0.4, "loading voice (Piper)...", None)]
    assert [(stage.name, stage.rss_added_mb) for stage in stages(lines)] == [(IMPORTS_STAGE, None)]
    assert stages([]) == []


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 |   _io
import time:       955 |      13488 | site
import time:      2630 |      19234 | app.cli
import time:       100 |       4000 |     numpy.core
import time:      1154 |     144589 | app.localmodel.serve
import time:       194 |      75687 | faster_whisper
helpdesk-voice embedded server
"""


def test_the_heaviest_top_level_imports_come_first_and_nested_ones_are_inside_them() -> None:
    ranked = heaviest_imports(IMPORTTIME, 3)
    assert [row["module"] for row in ranked] == ["app.localmodel.serve", "faster_whisper", "app.cli"]
    assert ranked[0] == {"module": "app.localmodel.serve", "cumulative_us": 144589, "self_us": 1154}
    assert import_total_us(IMPORTTIME) == 13488 + 19234 + 144589 + 75687


SMAPS = """\
55d0c0000000-55d0c8000000 rw-p 00000000 00:00 0                          [heap]
Rss:              204800 kB
Pss:              204800 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               40960 kB
Pss:               40960 kB
7f1000000000-7f1000100000 r-xp 00000000 08:01 123   /venv/lib/libavcodec-5e6b81c2.so.61.19.100
Rss:                1700 kB
Pss:                 850 kB
7f1000200000-7f1000300000 r--p 00100000 08:01 123   /venv/lib/libavcodec-5e6b81c2.so.61.19.100
Rss:                 300 kB
Pss:                 150 kB
7f2000000000-7f2000100000 r--s 00000000 08:01 456   /models/model file.safetensors
Rss:                2048 kB
Pss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
Pss:                 132 kB
"""


def test_memory_is_grouped_by_what_is_mapped_largest_first() -> None:
    rows = rss_by_mapping(SMAPS)
    assert [row["mapping"] for row in rows] == [
        "[heap]",
        mapping_group(""),
        "model file.safetensors",
        "libavcodec-5e6b81c2.so",
        mapping_group("[stack]"),
    ]
    assert rows[0] == {"mapping": "[heap]", "rss_mb": 200.0, "pss_mb": 200.0}
    assert rows[3] == {"mapping": "libavcodec-5e6b81c2.so", "rss_mb": 2.0, "pss_mb": 1.0}
    assert len(rss_by_mapping(SMAPS, 2)) == 2


def test_a_deleted_file_counts_under_its_name() -> None:
    assert mapping_group("/tmp/libfoo.so.1.2 (deleted)") == "libfoo.so"
