"""The numpy all-MiniLM-L6-v2 encoder: known outputs, invariants, numerics, speed.

There is no torch here to compare against, so correctness rests on the similarity matrix the
sentence-transformers documentation publishes for this model, on paraphrase behaviour, and on the
numerics the model's config asks for.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.localmodel.embed import (
    DIMENSION,
    MAX_TOKENS,
    EncoderError,
    MiniLMEncoder,
    default_model_dir,
    erf,
    gelu,
    limit_blas_threads,
    load_weights,
)


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():  # figures worth seeing in every run, not only with -s
        print(f"\n{line}")


@pytest.fixture(scope="module")
def encoder() -> Iterator[MiniLMEncoder]:
    try:
        model = MiniLMEncoder()
    except EncoderError as exc:
        pytest.skip(f"the MiniLM model is not available: {exc}")
    yield model


def _cosine(encoder: MiniLMEncoder, a: str, b: str) -> float:
    vectors = encoder.encode([a, b])
    return float(vectors[0] @ vectors[1])


# ---------------------------------------------------------------------------------------------------
# Known outputs
# ---------------------------------------------------------------------------------------------------


def test_reproduces_the_published_similarity_matrix(encoder: MiniLMEncoder) -> None:
    # The sentence-transformers quickstart prints this matrix for all-MiniLM-L6-v2 (four decimals).
    # Matching it means tokenizer, embeddings, attention, GELU, LayerNorm, pooling and normalisation
    # all agree with the reference implementation.
    vectors = encoder.encode(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    expected = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    similarities = vectors @ vectors.T
    assert np.allclose(similarities, expected, atol=6e-4), np.round(similarities, 4)


def test_paraphrases_score_far_above_unrelated_sentences(encoder: MiniLMEncoder) -> None:
    # Measured: 0.78 for the paraphrase, 0.14 and 0.13 for the printer sentence.
    paraphrase = _cosine(encoder, "How do I reset my password?", "I forgot my password")
    unrelated = _cosine(encoder, "How do I reset my password?", "The printer is out of toner")
    unrelated_too = _cosine(encoder, "I forgot my password", "The printer is out of toner")
    assert paraphrase > 0.7, paraphrase
    assert unrelated < 0.25 and unrelated_too < 0.25, (unrelated, unrelated_too)


def test_helpdesk_paraphrases_find_their_partner(encoder: MiniLMEncoder) -> None:
    requests = ["my vpn keeps dropping", "the printer has a paper jam", "my laptop is really slow"]
    partners = [
        "the remote access tunnel disconnects",
        "paper is stuck in the copier",
        "my computer is sluggish",
    ]
    similarities = encoder.encode(requests) @ encoder.encode(partners).T
    assert list(similarities.argmax(axis=1)) == [0, 1, 2], np.round(similarities, 3)


# ---------------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------------


def test_output_is_float32_unit_vectors(encoder: MiniLMEncoder) -> None:
    vectors = encoder.encode(
        ["one", "two words", "a somewhat longer sentence about a broken docking station"]
    )
    assert vectors.shape == (3, DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batch_equals_single(encoder: MiniLMEncoder) -> None:
    # Different lengths in one batch: padding must be masked out of attention and pooling.
    texts = ["hi", "my outlook has not synced since this morning and the outbox is full", "", "vpn"]
    batch = encoder.encode(texts)
    single = np.vstack([encoder.encode([text]) for text in texts])
    assert np.allclose(batch, single, atol=2e-6), np.abs(batch - single).max()


def test_order_is_kept_across_length_sorting_and_chunks(encoder: MiniLMEncoder) -> None:
    texts = [f"request number {index} " + "word " * (index % 7) for index in range(40)]  # more than one chunk
    batch = encoder.encode(texts)
    for index in (0, 13, 39):
        assert np.allclose(batch[index], encoder.encode([texts[index]])[0], atol=2e-6)


def test_empty_inputs(encoder: MiniLMEncoder) -> None:
    assert encoder.encode([]).shape == (0, DIMENSION)
    empty = encoder.encode([""])[0]
    assert np.isfinite(empty).all() and math.isclose(float(np.linalg.norm(empty)), 1.0, abs_tol=1e-5)
    with pytest.raises(TypeError):
        encoder.encode("a single string is a sequence of letters")


def test_long_text_is_truncated_at_128_tokens(encoder: MiniLMEncoder) -> None:
    long_text = "the docking station does not detect my second monitor " * 40
    ids, mask = encoder.tokenize([long_text, "short"])
    assert ids.shape == (2, MAX_TOKENS)
    assert int(mask[0].sum()) == MAX_TOKENS and int(mask[1].sum()) == 3  # [CLS] short [SEP]
    assert ids[0, 0] == 101 and ids[0, -1] == 102  # truncation keeps the closing [SEP]
    longer = encoder.encode([long_text, long_text + " and also my keyboard is broken"])
    assert np.allclose(longer[0], longer[1], atol=1e-6)  # words past the limit change nothing


def test_padding_is_per_batch_not_fixed(encoder: MiniLMEncoder) -> None:
    # tokenizer.json pads to 128 by default; short requests must not pay for that.
    ids, _ = encoder.tokenize(["the printer is out"])
    assert ids.shape == (1, 6)  # [CLS] the printer is out [SEP]
    ids, mask = encoder.tokenize(["the printer is out", "hi"])
    assert ids.shape == (2, 6) and mask[1].tolist() == [1, 1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------------------------------
# Numerics against the model's config
# ---------------------------------------------------------------------------------------------------


def test_numerics_follow_the_config(encoder: MiniLMEncoder) -> None:
    config = json.loads((default_model_dir() / "config.json").read_text(encoding="utf-8"))
    assert config["hidden_act"] == "gelu"  # the exact erf form, not "gelu_new" (tanh)
    assert encoder.layer_norm_eps == config["layer_norm_eps"] == 1e-12
    assert encoder.heads == config["num_attention_heads"] == 12
    assert config["hidden_size"] == DIMENSION
    pooling = json.loads((default_model_dir() / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]


def test_erf_and_gelu_are_the_exact_forms() -> None:
    x = np.linspace(-8.0, 8.0, 20001, dtype=np.float32)
    exact_erf = np.array([math.erf(float(value)) for value in x])
    assert np.abs(erf(x) - exact_erf).max() < 1e-6  # 1.5e-7 formula error plus float32 rounding
    exact_gelu = np.array([0.5 * float(v) * (1.0 + math.erf(float(v) / math.sqrt(2.0))) for v in x])
    assert np.abs(gelu(x) - exact_gelu).max() < 5e-6
    tanh_gelu = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh_gelu - exact_gelu).max() > 1e-4  # the approximation is distinguishable


def test_a_config_for_another_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu_new"}))
    with pytest.raises(EncoderError, match="hidden_act"):
        MiniLMEncoder(tmp_path)


def test_a_missing_model_is_an_encoder_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError):
        MiniLMEncoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    with pytest.raises(EncoderError, match="cannot load"):
        MiniLMEncoder(tmp_path)


def test_the_weights_are_the_files_and_the_word_embeddings_stay_in_it(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors: dict[str, npt.NDArray[Any]] = {
        "embeddings.word_embeddings.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
        "embeddings.position_ids": np.arange(5, dtype=np.int64)[None, :],
        "encoder.layer.0.output.dense.bias": np.array([0.5, -1.5], dtype=np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    loaded = load_weights(path)
    expected = load_file(str(path))
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name
    # Mapped from the file, read-only; the rest are arrays of their own.
    assert isinstance(loaded["embeddings.word_embeddings.weight"].base, np.memmap)
    assert not loaded["embeddings.word_embeddings.weight"].flags.writeable
    assert not isinstance(loaded["encoder.layer.0.output.dense.bias"].base, np.memmap)


# ---------------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------------


def test_load_time_and_latency(encoder: MiniLMEncoder, capsys: pytest.CaptureFixture[str]) -> None:
    assert limit_blas_threads(1)  # numpy's OpenBLAS here; the encoder already asked for one thread
    query = ["hi, my vpn keeps dropping every few minutes when i work from home"]
    encoder.encode(query)
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        encoder.encode(query)
    per_query_ms = (time.perf_counter() - started) * 1000 / runs
    _report(
        capsys,
        f"MiniLM: load {encoder.load_seconds * 1000:.0f} ms, {per_query_ms:.1f} ms per spoken request "
        f"({len(encoder.tokenize(query)[0][0])} tokens)",
    )
    # Generous bounds: a loaded CI machine, not a benchmark. Typical: 0.5 s and 10 ms.
    assert encoder.load_seconds < 10.0
    assert per_query_ms < 250.0
