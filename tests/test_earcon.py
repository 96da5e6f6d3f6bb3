from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.audio.earcon import EARCON_RATE, earcon_path, earcon_samples, load_earcon, synthesize_earcon


def test_shipped_earcon_is_the_synthesised_one() -> None:
    assert earcon_path().exists()
    shipped = earcon_samples()
    made = synthesize_earcon()
    assert len(shipped) == len(made)
    assert np.max(np.abs(shipped - made)) < 2 / 32768


def test_earcon_is_short_and_soft() -> None:
    samples = earcon_samples()
    assert 0.15 <= len(samples) / EARCON_RATE <= 0.3
    peak_dbfs = 20 * np.log10(np.max(np.abs(samples)))
    assert -20 <= peak_dbfs <= -15
    # It starts and ends quietly: no click into or out of it.
    assert abs(samples[0]) < 0.01 and np.max(np.abs(samples[-240:])) < 0.01


@pytest.mark.parametrize("content", [b"", b"RIFF garbage", None])
def test_missing_or_damaged_file_falls_back_to_synthesis(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "earcon.wav"
    if content is not None:
        path.write_bytes(content)
    assert load_earcon(path) == load_earcon(earcon_path())
