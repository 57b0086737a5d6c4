"""``medsearch preview`` and ``medsearch embed`` on DICOM, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.imaging import decode_path
from indexer.settings import ImagingSettings
from tests.cli.test_cli_embed import medsearch


def _file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return path


def test_preview_writes_what_the_model_sees(tmp_path: Path) -> None:
    out = tmp_path / "ct.png"
    run = medsearch("preview", _file("CT_small.dcm"), "-o", str(out))
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    expected_image = decode_path(_file("CT_small.dcm"), ImagingSettings()).images[0]
    assert facts["render_policy"] == "viewer-v1"
    assert facts["voi"] == expected_image.metadata.voi == "percentile"  # it stores no window
    written = np.asarray(Image.open(out))
    expected = expected_image.pixels
    assert np.array_equal(written, expected)


def test_preview_every_frame(tmp_path: Path) -> None:
    run = medsearch(
        "preview", _file("emri_small.dcm"), "-o", str(tmp_path / "f.png"), "--all-frames"
    )
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)) == 10
    assert len(list(tmp_path.glob("f-frame*.png"))) == 10


def test_preview_refuses_an_object_without_pixels(tmp_path: Path) -> None:
    run = medsearch("preview", _file("rtplan.dcm"), "-o", str(tmp_path / "x.png"))
    assert run.returncode == 2
    assert "no image" in run.stderr and "Traceback" not in run.stderr


def test_embed_reads_dicom(test_model_dir: Path, encoder: Encoder) -> None:
    run = medsearch("embed", "--model", str(test_model_dir), "--image", _file("CT_small.dcm"))
    assert run.returncode == 0, run.stderr
    got = np.asarray(json.loads(run.stdout)["image_features"][0], dtype=np.float32)
    pixels = decode_path(_file("CT_small.dcm"), ImagingSettings()).images[0].pixels
    want = encoder.embed_images([pixels])[0]
    assert float(got @ want) > 0.9999
