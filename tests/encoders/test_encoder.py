"""The ONNX Runtime encoder over the bundled test model: load, verify, embed, self-test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.encoders.encoder import Encoder
from indexer.encoders.preprocess import builtin_test_image
from indexer.encoders.sessions import resolve_provider
from indexer.errors import ManifestError, ProviderError, SelfTestError, TextInputError
from indexer.settings import EncoderSettings
from tests.encoders.test_preprocess import mode_matrix

GOLDEN_TEXT = "x-ray chest anteroposterior Atelectasis"
# Pinned from the committed test model (first 4 dims, fp32, CPU), independent of its
# manifest: they change only if the seeded weights, the graph or the preprocessing do.
PINNED_IMAGE = [0.30051, 0.10463, -0.06273, 0.00393]
PINNED_TEXT = [-0.17079, -0.06751, -0.02285, -0.30225]


def test_load_reports_model_facts(encoder: Encoder) -> None:
    info = encoder.info
    assert info.embedding_dim == 32
    assert info.provider == "CPUExecutionProvider"
    assert info.precision == "fp32"
    assert info.default_recipe == "reference"
    assert info.logit_scale == pytest.approx(4.5)


def test_embeddings_are_unit_norm_with_model_dim(
    encoder: Encoder, real_images: dict[str, Image.Image]
) -> None:
    images = list(real_images.values())
    img = encoder.embed_images(images)
    txt = encoder.embed_texts([GOLDEN_TEXT, "", "ct head"])
    assert img.shape == (len(images), 32) and txt.shape == (3, 32)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    # different images give different embeddings
    assert len({tuple(np.round(v, 4)) for v in img}) == len(images)


def test_golden_embeddings_reproduced(encoder: Encoder) -> None:
    golden = encoder.manifest.golden
    img = encoder.embed_images([builtin_test_image()])[0]
    txt = encoder.embed_texts([golden.text_input])[0]
    np.testing.assert_allclose(img, golden.image, atol=1e-5)
    np.testing.assert_allclose(txt, golden.text, atol=1e-5)
    np.testing.assert_allclose(img[:4], PINNED_IMAGE, atol=2e-5)
    np.testing.assert_allclose(txt[:4], PINNED_TEXT, atol=2e-5)


def test_text_batch_padding_does_not_change_embeddings(encoder: Encoder) -> None:
    texts = ["a", GOLDEN_TEXT, "ct " * 30, ""]
    together = encoder.embed_texts(texts)
    alone = np.concatenate([encoder.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_image_batching_does_not_change_embeddings(
    test_model_dir: Path, real_images: dict[str, Image.Image]
) -> None:
    images = list(real_images.values()) * 3
    one = Encoder.load(
        test_model_dir,
        EncoderSettings(provider="cpu", batch_size=1, self_test=False, verify_hashes=False),
    )
    five = Encoder.load(
        test_model_dir,
        EncoderSettings(provider="cpu", batch_size=5, self_test=False, verify_hashes=False),
    )
    np.testing.assert_allclose(one.embed_images(images), five.embed_images(images), atol=1e-5)


def test_every_image_mode_embeds(encoder: Encoder) -> None:
    out = encoder.embed_images(list(mode_matrix().values()))
    assert np.isfinite(out).all()


def test_azure_recipe_is_available_and_differs(encoder: Encoder) -> None:
    image = builtin_test_image()
    ref = encoder.embed_images([image], "reference")[0]
    az = encoder.embed_images([image], "azure")[0]
    assert 0.9 < float(ref @ az) < 1.0
    with pytest.raises(ManifestError, match="recipe 'nope'"):
        encoder.embed_images([image], "nope")


def test_fp16_variant_runs_and_agrees(
    test_model_dir: Path, encoder: Encoder, real_images: dict[str, Image.Image]
) -> None:
    half = Encoder.load(test_model_dir, EncoderSettings(provider="cpu", precision="fp16"))
    assert half.precision == "fp16"
    images = list(real_images.values())
    cos_img = (half.embed_images(images) * encoder.embed_images(images)).sum(1)
    cos_txt = (half.embed_texts([GOLDEN_TEXT]) * encoder.embed_texts([GOLDEN_TEXT])).sum(1)
    assert cos_img.min() >= 0.999 and cos_txt.min() >= 0.999


def test_tampered_file_is_refused(tmp_model_copy: Path) -> None:
    onnx = tmp_model_copy / "image_encoder.onnx"
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="image_encoder.onnx does not match its sha256"):
        Encoder.load(tmp_model_copy, EncoderSettings(provider="cpu"))


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        Encoder.load(tmp_path)


def test_corrupt_manifest_is_refused(tmp_model_copy: Path) -> None:
    (tmp_model_copy / "manifest.json").write_text('{"fingerprint": 3}')
    with pytest.raises(ManifestError, match="not a valid medsearch manifest"):
        Encoder.load(tmp_model_copy)


def test_model_that_misses_its_goldens_is_refused(tmp_model_copy: Path) -> None:
    path = tmp_model_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["golden"]["image"] = [-v for v in manifest["golden"]["image"]]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SelfTestError, match="image embedding of the built-in input"):
        Encoder.load(tmp_model_copy, EncoderSettings(provider="cpu"))


def test_cuda_asked_for_without_it_is_refused() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ProviderError, match="CUDA was asked for"):
        resolve_provider("cuda")
    assert resolve_provider("auto") == "CPUExecutionProvider"


def test_missing_fp16_variant_is_refused(tmp_model_copy: Path) -> None:
    path = tmp_model_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["variants"]["fp16"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="no fp16 variant"):
        Encoder.load(tmp_model_copy, EncoderSettings(provider="cpu", precision="fp16"))


def test_non_string_text_is_refused(encoder: Encoder) -> None:
    with pytest.raises(TextInputError):
        encoder.embed_texts([3])  # type: ignore[list-item]
