"""``medsearch embed`` and ``medsearch model info`` as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.encoders.encoder import Encoder


def medsearch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture()
def png(tmp_path: Path, real_images: dict[str, Image.Image]) -> Path:
    path = tmp_path / "ct.png"
    real_images["CT_small.dcm"].save(path)
    return path


def test_embed_prints_the_azure_response_shape(
    test_model_dir: Path, png: Path, encoder: Encoder
) -> None:
    text = "x-ray chest anteroposterior Atelectasis"
    run = medsearch(
        "embed",
        "--model",
        str(test_model_dir),
        "--image",
        str(png),
        "--text",
        text,
        "--text",
        "ct head",
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert set(out) == {"image_features", "text_features", "scaling_factor"}
    assert np.asarray(out["image_features"]).shape == (1, 32)
    assert np.asarray(out["text_features"]).shape == (2, 32)
    assert out["scaling_factor"] == pytest.approx(4.5)
    want = encoder.embed_images([Image.open(png)])[0]
    np.testing.assert_allclose(out["image_features"][0], want, atol=1e-6)
    np.testing.assert_allclose(out["text_features"][0], encoder.embed_texts([text])[0], atol=1e-6)


def test_embed_refuses_a_corrupt_image_with_a_message(test_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    run = medsearch("embed", "--model", str(test_model_dir), "--image", str(bad))
    assert run.returncode == 2
    assert "bad.png: corrupt: unreadable image header" in run.stderr
    assert "Traceback" not in run.stderr


def test_embed_refuses_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    run = medsearch("embed", "--model", str(tmp_path), "--text", "x")
    assert run.returncode == 2
    assert "manifest.json is missing" in run.stderr
    assert "Traceback" not in run.stderr


def test_model_info_verifies_and_summarises(test_model_dir: Path, encoder: Encoder) -> None:
    run = medsearch("model", "info", str(test_model_dir))
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["fingerprint"] == encoder.fingerprint
    assert info["self_test"] == "passed" and info["provider"] == "CPUExecutionProvider"
    assert info["variants"] == ["fp16", "fp32"]
