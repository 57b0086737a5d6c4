"""``medsearch preview`` and ``medsearch embed`` on DICOM, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.imaging import decode_path
from indexer.imaging.types import Reason
from indexer.settings import ImagingSettings
from tests.cli.test_cli_embed import medsearch
from tests.imaging.bombs import write_memory_bomb


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


def test_preview_and_embed_refuse_a_memory_bomb(test_model_dir: Path, tmp_path: Path) -> None:
    """A file whose header claims 4.6 GB of pixels is refused with a reason; clean exit."""
    bomb = str(write_memory_bomb(tmp_path / "bomb.dcm"))
    env = {"MEDSEARCH_DECODE_MEMORY_MB": "512", "MEDSEARCH_MAX_FRAMES": "64"}
    runs = [
        medsearch("preview", bomb, "-o", str(tmp_path / "b.png"), "--all-frames", env=env),
        medsearch("embed", "--model", str(test_model_dir), "--image", bomb, env=env),
    ]
    for run in runs:
        assert run.returncode == 2, run.stderr
        assert "bomb.dcm" in run.stderr and "Traceback" not in run.stderr
        assert any(reason.value in run.stderr for reason in Reason), run.stderr
    assert not (tmp_path / "b.png").exists()


def test_preview_and_embed_decode_within_the_guard_budget(
    test_model_dir: Path, tmp_path: Path
) -> None:
    """Decoding runs in the guarded worker, under its time budget (here absurdly small,
    so that even a good file runs out of it): a refusal, never a hung or dead command."""
    env = {"MEDSEARCH_DECODE_TIMEOUT_S": "0.001"}
    ct = _file("CT_small.dcm")
    for run in (
        medsearch("preview", ct, "-o", str(tmp_path / "t.png"), env=env),
        medsearch("embed", "--model", str(test_model_dir), "--image", ct, env=env),
    ):
        assert run.returncode == 2, run.stderr
        assert Reason.TIMEOUT.value in run.stderr and "Traceback" not in run.stderr


def test_embed_reads_dicom(test_model_dir: Path, encoder: Encoder) -> None:
    run = medsearch("embed", "--model", str(test_model_dir), "--image", _file("CT_small.dcm"))
    assert run.returncode == 0, run.stderr
    got = np.asarray(json.loads(run.stdout)["image_features"][0], dtype=np.float32)
    pixels = decode_path(_file("CT_small.dcm"), ImagingSettings()).images[0].pixels
    want = encoder.embed_images([pixels])[0]
    assert float(got @ want) > 0.9999


def test_a_memory_bomb_is_one_clear_line(tmp_path: Path) -> None:
    """pydicom's SC_rgb_jpeg_dcmtk.dcm with the JPEG SOF0 height set to 0: before, preview
    printed two worker tracebacks before its refusal."""
    from tests.imaging.test_guard import sof0_height_zero

    bomb = tmp_path / "sof0.dcm"
    bomb.write_bytes(sof0_height_zero())
    run = medsearch(
        "preview", str(bomb), "-o", str(tmp_path / "out.png"),
        env={"MEDSEARCH_DECODE_MEMORY_MB": "1024"},
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "decode memory limit" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.png").exists()
