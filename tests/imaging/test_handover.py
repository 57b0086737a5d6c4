"""Workers hand over the model's input, not full-resolution pixels, and that changes no
embedding: the prepared input equals today's in-process preprocessing of the rendering."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.encoders.preprocess import make_recipe, normalise, preprocess
from indexer.imaging.decode import decode_bytes
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.settings import ImagingSettings

DICOM = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "JPEG2000.dcm")


def _inputs() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in DICOM:
        path = get_testdata_file(name)
        assert path is not None
        out[name] = Path(path).read_bytes()
    rng = np.random.default_rng(7)
    for mode, shape in (("L", (301, 211)), ("RGB", (257, 333, 3)), ("I;16", (190, 270))):
        arr = rng.integers(0, 65535 if mode == "I;16" else 255, size=shape)
        img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out[f"png-{mode}"] = buf.getvalue()
    return out


@pytest.mark.parametrize("recipe_name", ["reference", "azure"])
def test_handed_over_input_equals_in_process_preprocessing(
    encoder: Encoder, recipe_name: str
) -> None:
    recipe = encoder.recipe(recipe_name)
    inputs = _inputs()
    settings = ImagingSettings()
    with DecoderPool(settings, workers=2) as pool:
        results = list(pool.map(DecodeJob(data=d, recipe=recipe) for d in inputs.values()))
    for (name, data), result in zip(inputs.items(), results, strict=True):
        assert result.ok, (name, result.reason, result.detail)
        (handed,) = result.images
        full = decode_bytes(data, settings).images[0]
        assert handed.recipe == recipe_name
        assert handed.pixels.shape[:2] == recipe.size
        grey_kept = full.grey and recipe.jpeg_quality is None
        assert handed.pixels.ndim == (2 if grey_kept else 3), name
        assert handed.pixels.nbytes <= 480 * 480 * 3
        today = preprocess(full.pixels, recipe)  # the in-process path: RGB rendering
        assert np.array_equal(normalise([handed.pixels], recipe)[0], today), name
        a = encoder.embed_inputs([handed.pixels], recipe_name)[0]
        b = encoder.embed_images([full.pixels], recipe_name)[0]
        assert float(np.dot(a, b)) >= 0.9999, name


def test_grey_stays_one_channel_until_normalisation() -> None:
    recipe = make_recipe("reference", (480, 480), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    grey = np.random.default_rng(3).integers(0, 255, size=(517, 389), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(preprocess(grey, recipe), preprocess(rgb, recipe))
