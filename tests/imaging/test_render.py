"""Rendering policy viewer-v1 on real files and on datasets built to isolate one rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from indexer.imaging import decode_path
from indexer.imaging.render import percentile_clip, render_grey, window
from indexer.settings import ImagingSettings


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _view(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_linear_window_follows_the_standard() -> None:
    x = np.array([0.0, 49.5, 50.0, 99.5, 100.0, 150.0, 200.0])
    out = window(x, center=100.0, width=101.0)
    # PS3.3 C.11.2.1.2.1: 0 at or below c - 0.5 - (w-1)/2 = 49.5; 1 above c - 0.5 + (w-1)/2
    assert out[0] == 0.0 and out[1] == 0.0 and out[-1] == 1.0 and out[-2] == 1.0
    assert out[3] == pytest.approx(0.5)
    assert np.all(np.diff(out) >= 0)


def test_linear_exact_and_sigmoid() -> None:
    x = np.array([0.0, 50.0, 100.0])
    assert window(x, 50.0, 100.0, "LINEAR_EXACT").tolist() == [0.0, 0.5, 1.0]
    sig = window(x, 50.0, 100.0, "SIGMOID")
    assert sig[1] == pytest.approx(0.5) and 0 < sig[0] < 0.5 < sig[2] < 1


def test_stored_window_is_applied_after_rescale() -> None:
    raw = np.arange(0, 2000, dtype=np.uint16).reshape(40, 50)
    view = _view(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    grey, voi = render_grey(raw, view)
    assert voi == "window"
    hu = raw.astype(np.float64) - 1024
    assert np.all(grey[hu <= 40 - 0.5 - 399 / 2] == 0)
    assert np.all(grey[hu > 40 - 0.5 + 399 / 2] == 255)


def test_monochrome1_is_inverted() -> None:
    raw = np.tile(np.arange(256, dtype=np.uint16), (8, 1))
    mono2, _ = render_grey(raw, _view())
    mono1, _ = render_grey(raw, _view(PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_percentile_clip_without_a_stored_window() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(1000, 100, size=(64, 64))
    raw[0, 0], raw[0, 1] = -1e6, 1e6  # outliers do not set the range
    grey, voi = render_grey(raw, _view())
    assert voi == "percentile"
    assert 0.005 < float(np.mean(grey == 0)) < 0.03 and 0.005 < float(np.mean(grey == 255)) < 0.03
    flat, how = percentile_clip(np.full((4, 4), 7.0))
    assert how == "minmax" and not flat.any()


def test_window_that_flattens_the_image_falls_back_to_percentiles() -> None:
    raw = np.linspace(2000, 2500, 400, dtype=np.float64).reshape(20, 20)
    grey, voi = render_grey(raw, _view(WindowCenter=30, WindowWidth=100))
    assert voi == "percentile-fallback" and grey.min() < grey.max()


def test_real_monochrome1_radiograph_matches_its_window() -> None:
    path = _file("MR_small.dcm")  # a MONOCHROME2 control
    assert decode_path(path, ImagingSettings()).images[0].metadata.voi in ("window", "percentile")
    ds = dcmread(_file("RG1_UNCR.dcm")) if get_testdata_file("RG1_UNCR.dcm") else None
    if ds is None:
        pytest.skip("pydicom-data not installed")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = decode_path(_file("RG1_UNCR.dcm"), ImagingSettings()).images[0]
    raw = pixel_array(ds).astype(np.float64)
    # high raw values (dense bone, MONOCHROME1 white = low) must render dark
    bright = raw > np.percentile(raw, 99)
    dark = raw < np.percentile(raw, 1)
    assert image.pixels[bright, 0].mean() < image.pixels[dark, 0].mean()


def test_palette_colour_ultrasound_becomes_rgb() -> None:
    path = _file("OBXXXX1A.dcm")
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    image = decode_path(path, ImagingSettings()).images[0]
    assert image.pixels.shape == (ds.Rows, ds.Columns, 3)
    channels = image.pixels.reshape(-1, 3).astype(int)
    assert np.any(channels[:, 0] != channels[:, 2])  # really colour, not grey


def test_ybr_jpeg_is_converted_to_rgb() -> None:
    rgb = decode_path(_file("SC_rgb.dcm"), ImagingSettings()).images[0].pixels.astype(int)
    jpeg = decode_path(_file("SC_rgb_jpeg_dcmtk.dcm"), ImagingSettings()).images[0].pixels
    assert float(np.abs(rgb - jpeg.astype(int)).mean()) < 3.0  # same picture, lossy copy


def test_multiframe_middle_frame_by_default_or_every_frame() -> None:
    path = _file("emri_small.dcm")
    n = int(dcmread(path).NumberOfFrames)
    middle = decode_path(path, ImagingSettings()).images
    assert [im.metadata.frame for im in middle] == [n // 2 + 1]
    every = decode_path(path, ImagingSettings(frames="all")).images
    assert [im.metadata.frame for im in every] == list(range(1, n + 1))
    assert np.array_equal(every[n // 2].pixels, middle[0].pixels)
    assert all(im.metadata.number_of_frames == n for im in every)


def test_enhanced_multiframe_uses_functional_group_window(tmp_path: Path) -> None:
    ds = dcmread(_file("emri_small.dcm"))
    ds.pop("WindowCenter", None)
    ds.pop("WindowWidth", None)
    group = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 200, 50
    group.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [group]
    out = tmp_path / "enhanced.dcm"
    ds.save_as(out)
    image = decode_path(out, ImagingSettings()).images[0]
    assert image.metadata.voi == "window"
    raw = pixel_array(ds, index=int(ds.NumberOfFrames) // 2).astype(np.float64)
    assert np.all(image.pixels[raw > 200 + 25, 0] == 255)


def test_burned_in_annotation_is_recorded(tmp_path: Path) -> None:
    ds = dcmread(_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "burned.dcm")
    meta = decode_path(tmp_path / "burned.dcm", ImagingSettings()).images[0].metadata
    assert meta.burned_in_annotation is True
    assert decode_path(_file("CT_small.dcm"), ImagingSettings()).images[0].metadata.modality == "CT"


def test_refuses_frames_over_the_pixel_limit() -> None:
    result = decode_path(_file("CT_small.dcm"), ImagingSettings(max_pixels=100 * 100))
    assert result.reason is not None and result.reason.value == "too large"
