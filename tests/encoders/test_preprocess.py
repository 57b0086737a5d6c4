"""Preprocessing recipes and the image-mode matrix."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer.encoders.preprocess import (
    builtin_test_image,
    image_from_array,
    make_recipe,
    preprocess,
    to_rgb,
)
from indexer.errors import ImageInputError
from tests.conftest import has_module

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
REFERENCE = make_recipe("reference", (480, 480), MEAN, STD)
AZURE = make_recipe("azure", (480, 480), MEAN, STD)


def _ramp(h: int = 61, w: int = 83) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2) % 256).astype(np.uint8)


def mode_matrix() -> dict[str, Image.Image]:
    grey = _ramp()
    rgb = np.stack([grey, 255 - grey, np.roll(grey, 7, axis=1)], axis=-1)
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:, :10] = 0
    images = {
        "1": Image.fromarray(grey > 128),
        "L": Image.fromarray(grey),
        "P": Image.fromarray(rgb).convert("P"),
        "LA": Image.fromarray(np.stack([grey, alpha], -1), mode="LA"),
        "RGB": Image.fromarray(rgb),
        "RGBA": Image.fromarray(np.dstack([rgb, alpha])),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "I": Image.fromarray(grey.astype(np.int32) * 1000 - 5000),
        "F": Image.fromarray(grey.astype(np.float32) / 7.0),
    }
    p_trans = Image.fromarray(rgb).convert("P")
    p_trans.info["transparency"] = 0
    images["P+transparency"] = p_trans
    return images


@pytest.mark.parametrize("mode", sorted(mode_matrix()))
def test_every_mode_gives_three_channels_not_blank(mode: str) -> None:
    image = mode_matrix()[mode]
    x = preprocess(image, REFERENCE)
    assert x.shape == (3, 480, 480) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert float(x.std()) > 0.1, "image came out (nearly) constant"


def test_16bit_grey_is_scaled_not_clamped() -> None:
    values = np.array([[0, 4096, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[0, :, 0].tolist() == [0, 16, 128, 255]  # Pillow's convert("L") gives 0,255,255,255


def test_16bit_rgb_array_is_scaled() -> None:
    arr = np.zeros((4, 4, 3), dtype=np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32768, 257
    assert np.asarray(image_from_array(arr))[0, 0].tolist() == [255, 128, 1]


def test_rgba_is_composited_on_black() -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[..., :3] = 200
    arr[0, 0, 3], arr[0, 1, 3], arr[1, :, 3] = 0, 128, 255
    rgb = np.asarray(to_rgb(Image.fromarray(arr)))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[1, 0].tolist() == [200, 200, 200]
    assert 90 < rgb[0, 1, 0] < 110


def test_png_with_palette_transparency_roundtrip() -> None:
    img = mode_matrix()["P+transparency"]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as reread:
        assert reread.mode == "P" and "transparency" in reread.info
        assert to_rgb(reread).mode == "RGB"


@pytest.mark.skipif(not has_module("torchvision"), reason="needs torchvision (dev extra)")
@pytest.mark.parametrize("size", [(37, 53), (480, 480), (611, 300)])
def test_reference_recipe_equals_the_reference_transform(size: tuple[int, int]) -> None:
    import torchvision.transforms as T

    grey = Image.fromarray(_ramp(*size)).convert("RGB")
    transform = T.Compose(
        [
            T.Resize((480, 480), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=MEAN, std=STD),
        ]
    )
    want = transform(grey).numpy()
    got = preprocess(grey, REFERENCE)
    assert np.abs(got - want).max() < 1e-6


def test_azure_recipe_squashes_and_jpeg_encodes() -> None:
    image = builtin_test_image()
    ref, az = preprocess(image, REFERENCE), preprocess(image, AZURE)
    assert ref.shape == az.shape
    diff = np.abs(ref - az)
    assert 0 < diff.mean() < 0.2  # same picture, JPEG artefacts


def test_unknown_recipe_and_bad_arrays_are_refused() -> None:
    with pytest.raises(ImageInputError, match="unknown preprocessing recipe"):
        make_recipe("bilinear", (480, 480), MEAN, STD)
    with pytest.raises(ImageInputError, match="shape"):
        image_from_array(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageInputError, match="empty"):
        image_from_array(np.zeros((0, 5), np.uint8))
    with pytest.raises(ImageInputError, match="finite"):
        image_from_array(np.full((3, 3), np.nan, np.float32))
