"""Whether the user has finished speaking, judged by meaning and intonation: Smart Turn v3.

A fixed silence window must be long (about half a second) not to cut off someone who pauses in the
middle of a sentence ("my VPN... it keeps dropping"), and every turn waits it out. Smart Turn v3
(Daily, BSD-2-Clause: an int8 ONNX model on a Whisper-tiny encoder, 8.7 MB) looks at the last eight
seconds of the user's audio and says how likely the turn is complete, so the server can answer
after a short pause when it is and wait longer when it is not (:mod:`session`).

The model file comes from the ``pipecat-ai`` wheel, installed without its dependencies (only the
file is used; nothing of pipecat is imported). Its input is Whisper's log-mel spectrogram of 8 s at
16 kHz (80 bands, 10 ms hop) of the waveform normalised to zero mean and unit variance, the audio
left-padded with silence; faster-whisper's feature extractor computes exactly that spectrogram.
One judgement takes about 45 ms of one core here (``bench/turns.py`` reports it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["MODEL_ENV", "SAMPLE_RATE", "TurnEndModel", "features", "model_path"]

MODEL_ENV: Final = "HELPDESK_VOICE_SMART_TURN_MODEL"
SAMPLE_RATE: Final = 16000
WINDOW_S: Final = 8
_MODEL_FILE: Final = "smart-turn-v3.2-cpu.onnx"
_IN_WHEEL: Final = ("audio", "turn", "smart_turn", "data", _MODEL_FILE)
_BUNDLED: Final = "smart_turn"  # where a frozen app keeps it (packaging/pyinstaller)
_VARIANCE_FLOOR: Final = 1e-7

FloatArray = npt.NDArray[np.float32]


def model_path(environ: os._Environ[str] | dict[str, str] | None = None) -> Path | None:
    """The Smart Turn model file, or None when it is not installed.

    ``HELPDESK_VOICE_SMART_TURN_MODEL`` names another file; a frozen app carries it beside itself;
    otherwise it is the file in the installed ``pipecat-ai`` package, found without importing it.
    """
    env = os.environ if environ is None else environ
    named = env.get(MODEL_ENV, "").strip()
    if named:
        return Path(named) if Path(named).is_file() else None
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:
        frozen = Path(bundle) / _BUNDLED / _MODEL_FILE
        return frozen if frozen.is_file() else None
    try:
        spec = importlib.util.find_spec("pipecat")  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder).joinpath(*_IN_WHEEL)
        if candidate.is_file():
            return candidate
    return None


_extractor: Any = None


def features(audio_16k: npt.ArrayLike) -> FloatArray:
    """The model's input for ``audio_16k`` (mono float at 16 kHz): shape (80, 800)."""
    global _extractor
    if _extractor is None:
        from faster_whisper.feature_extractor import FeatureExtractor

        _extractor = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S)
    samples = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    window = WINDOW_S * SAMPLE_RATE
    if len(samples) > window:
        samples = samples[-window:]  # what was said last decides
    elif len(samples) < window:
        samples = np.concatenate([np.zeros(window - len(samples), np.float32), samples])
    samples = (samples - samples.mean()) / np.sqrt(samples.var() + _VARIANCE_FLOOR)
    mel = _extractor(samples, padding=0)
    return np.asarray(mel, dtype=np.float32)


class TurnEndModel:
    """Smart Turn v3 under onnxruntime, one thread (the recogniser and the voice need the rest)."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        found = path if path is not None else model_path()
        if found is None:
            raise FileNotFoundError(
                f"the end-of-turn model ({_MODEL_FILE}) is not installed: install pipecat-ai without "
                f"its dependencies (scripts/install.sh does), or name the file in {MODEL_ENV}"
            )
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = found
        self._session = ort.InferenceSession(
            str(found), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def probability(self, audio_16k: npt.ArrayLike) -> float:
        """How likely the user has finished their turn, 0 to 1, from the turn's audio so far."""
        batch = features(audio_16k)[np.newaxis]
        (logits,) = self._session.run(None, {self._input: batch})[:1]
        value = float(np.asarray(logits).reshape(-1)[0])  # the model ends in a sigmoid already
        return min(1.0, max(0.0, value)) if np.isfinite(value) else 0.0
