"""The exporter: regenerates the bundled test model, refuses bad releases cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.encoders.encoder import Encoder
from indexer.errors import CheckpointError, ModelConfigError, ModelError
from indexer.settings import EncoderSettings
from tests.conftest import needs_torch

pytestmark = needs_torch

TEXTS = ["x-ray chest anteroposterior Atelectasis", "", "MRI brain T2 FLAIR glioma"]


@pytest.fixture(scope="module")
def small_state() -> dict[str, Any]:
    from indexer.model.synthetic import TEST_MODEL_SEED, random_state_dict, small_config

    return random_state_dict(small_config(), 49408, TEST_MODEL_SEED)


def _release(
    root: Path, test_model_dir: Path, state: dict[str, Any], config: dict[str, Any] | None = None
) -> Path:
    from indexer.model.synthetic import small_config, write_release

    tok = test_model_dir / "tokenizer"
    return write_release(
        root, config or small_config(), state, tok / "vocab.json", tok / "merges.txt"
    )


def _no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if ".partial" in p.name] == []


def test_regenerated_test_model_matches_the_bundled_one(
    tmp_path: Path, test_model_dir: Path, encoder: Encoder, real_images: dict[str, Any]
) -> None:
    from indexer.model.synthetic import build_test_model

    tok = test_model_dir / "tokenizer"
    manifest = build_test_model(tmp_path / "regen", tok / "vocab.json", tok / "merges.txt")
    assert manifest.fingerprint == encoder.fingerprint
    regen = Encoder.load(tmp_path / "regen", EncoderSettings(provider="cpu"))
    images = list(real_images.values())
    np.testing.assert_allclose(regen.embed_images(images), encoder.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(regen.embed_texts(TEXTS), encoder.embed_texts(TEXTS), atol=1e-5)
    _no_leftovers(tmp_path)


def test_manifest_records_what_the_issue_asks(test_model_dir: Path) -> None:
    m = json.loads((test_model_dir / "manifest.json").read_text())
    assert m["input_size"] == [480, 480] and m["embedding_dim"] == 32
    assert m["mean"] == [0.485, 0.456, 0.406] and m["std"] == [0.229, 0.224, 0.225]
    assert m["opset"] == 18 and m["logit_scale"] == pytest.approx(4.5)
    assert set(m["preprocessing"]["recipes"]) == {"reference", "azure"}
    assert m["preprocessing"]["recipes"]["azure"]["squash"] == 512
    assert {f["path"] for f in m["files"]} >= {
        "image_encoder.onnx",
        "text_encoder.onnx",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
    }
    assert len(m["fingerprint"]) == 64
    assert m["architecture"]["image"]["dim_embed"] == [16, 32, 48, 64]


def test_old_key_names_export_the_same_model(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any]
) -> None:
    from indexer.model.export import export_release
    from indexer.model.synthetic import old_key_names

    new = export_release(_release(tmp_path / "new", test_model_dir, small_state), tmp_path / "a")
    old = export_release(
        _release(tmp_path / "old", test_model_dir, old_key_names(small_state)), tmp_path / "b"
    )
    assert new.golden.image == pytest.approx(old.golden.image, abs=1e-6)
    assert new.golden.text == pytest.approx(old.golden.text, abs=1e-6)


def test_missing_and_unexpected_keys_are_listed(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any]
) -> None:
    import torch

    from indexer.model.export import export_release

    state = dict(small_state)
    del state["image_encoder.norms.weight"], state["lang_projection"]
    state["image_encoder.head.weight"] = torch.zeros(3)
    release = _release(tmp_path / "rel", test_model_dir, state)
    with pytest.raises(CheckpointError) as err:
        export_release(release, tmp_path / "out")
    message = str(err.value)
    assert "2 missing key(s): image_encoder.norms.weight, lang_projection" in message
    assert "1 unexpected key(s): image_encoder.head.weight" in message
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_unexpected_keys_can_be_ignored_explicitly(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any]
) -> None:
    import torch

    from indexer.model.export import export_release

    state = dict(small_state)
    state["image_encoder.head.weight"] = torch.zeros(3)
    release = _release(tmp_path / "rel", test_model_dir, state)
    manifest = export_release(release, tmp_path / "out", allow_unexpected_keys=True)
    assert manifest.embedding_dim == 32


def test_shapes_that_contradict_the_config_are_refused(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any]
) -> None:
    from indexer.model.export import export_release
    from indexer.model.synthetic import small_config

    config = small_config()
    config["UNICL_MODEL"]["DIM_PROJECTION"] = 48  # the checkpoint was made for 32
    release = _release(tmp_path / "rel", test_model_dir, small_state, config)
    with pytest.raises(
        CheckpointError,
        match=r"image_projection \(64, 32\) \(config says "
        r"\(64, 48\)\)",
    ):
        export_release(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("remove", ["config.yaml", "vision_model", "language_model"])
def test_missing_release_files_are_named(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any], remove: str
) -> None:
    from indexer.model.export import export_release

    release = _release(tmp_path / "rel", test_model_dir, small_state)
    target = release / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelConfigError, match="not a complete MedImageInsight release"):
        export_release(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_and_config_are_refused(
    tmp_path: Path, test_model_dir: Path, small_state: dict[str, Any]
) -> None:
    from indexer.model.export import export_release

    release = _release(tmp_path / "rel", test_model_dir, small_state)
    (release / "vision_model" / "medimageinsight-v1.0.0.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        export_release(release, tmp_path / "out")
    (release / "config.yaml").write_text("IMAGE_ENCODER: {NAME: davit_v1}\n")
    with pytest.raises(ModelConfigError, match=r"IMAGE_ENCODER\.SPEC is missing"):
        export_release(release, tmp_path / "out")
    _no_leftovers(tmp_path)


def test_existing_output_is_not_overwritten_by_default(
    tmp_path: Path, test_model_dir: Path
) -> None:
    from indexer.model.export import export_release

    (tmp_path / "out").mkdir()
    with pytest.raises(ModelError, match="already exists"):
        export_release(test_model_dir, tmp_path / "out")
