"""The Azure MedImageInsight embedding API as Microsoft documents it, over a live server.

The requests are the ones the public how-to shows ("Use MedImageInsight healthcare AI model
for medical image embedding generation", Request example) and the ones its sample code
builds: ``base64.encodebytes`` wraps the base64 every 76 characters and ends it with a
newline, and ``get_scaling_factor`` comes as ``true``, ``"true"`` or ``"True"``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.imaging.decode import decode_path
from indexer.pipeline.runner import BuildReport
from indexer.settings import ImagingSettings
from service.app import create_app
from tests.service.conftest import settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow

ROUTES = ("/score", "/v1/embed")

# The how-to's two request examples, verbatim (the image: a 2x2 RGBA PNG, wrapped by
# base64.encodebytes, newline at the end).
DOC_TEXT_REQUEST = """{
  "input_data": {
    "columns": [
      "image",
      "text"
    ],
    "index":[0],
    "data": [
      ["", "a quick brown fox jumps over the lazy dog"]
    ]
  },
  "params": {}
}"""
DOC_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\n"
    "jwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\n"
    "VGwJ5VDvPeYAAAAASUVORK5CYII=\n"
)
DOC_IMAGE_REQUEST = """{
    "input_data": {
        "columns": ["image", "text"],
        "index": [0],
        "data": [
            [
                "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\\njwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\\nVGwJ5VDvPeYAAAAASUVORK5CYII=\\n",
                "x-ray chest anteroposterior Pleural Effusion"
            ]
        ]
    },
    "params": {
        "get_scaling_factor": "true"
    }
}"""


@pytest.fixture(scope="module")
def api(built_index: tuple[Path, BuildReport]) -> Iterator[httpx.Client]:
    app = create_app(settings_for(built_index[0]))
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def pngs(
    tmp_path_factory: pytest.TempPathFactory, real_images: dict[str, Image.Image]
) -> dict[str, Path]:
    """A PNG written with PIL from a pydicom image, and one rendered from a CT by the indexer."""
    folder = tmp_path_factory.mktemp("azure-png")
    pil_png = folder / "mr_small.png"
    real_images["MR_small.dcm"].save(pil_png)
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    rendered = decode_path(ct, ImagingSettings()).images[0].pixels
    ct_png = folder / "ct_small.png"
    Image.fromarray(rendered).save(ct_png)
    return {"pil": pil_png, "ct": ct_png}


def read_image(image_path: Path) -> bytes:  # as in Microsoft's sample code
    with open(image_path, "rb") as f:
        return f.read()


def _request(columns: list[str], rows: list[list[str]], **params: Any) -> dict[str, Any]:
    return {
        "input_data": {"columns": columns, "index": list(range(len(rows))), "data": rows},
        "params": params,
    }


def _post(api: httpx.Client, route: str, body: dict[str, Any] | str) -> httpx.Response:
    if isinstance(body, str):
        return api.post(route, content=body, headers={"content-type": "application/json"})
    return api.post(route, json=body)


def _ok(api: httpx.Client, route: str, body: dict[str, Any] | str) -> dict[str, Any]:
    r = _post(api, route, body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _image_vector(api: httpx.Client, data: bytes) -> list[float]:
    """The embedding of ``data`` sent the plain way: one line of base64, no params."""
    body = _request(["image"], [[base64.b64encode(data).decode()]])
    vectors: list[list[float]] = _ok(api, "/score", body)["image_features"]
    assert len(vectors) == 1
    return vectors[0]


@pytest.mark.parametrize("route", ROUTES)
def test_the_documented_requests_verbatim(api: httpx.Client, encoder: Encoder, route: str) -> None:
    text_only = _ok(api, route, DOC_TEXT_REQUEST)
    assert text_only["image_features"] == [] and len(text_only["text_features"]) == 1
    # "params": {} -> the documented default, get_scaling_factor true
    assert text_only["scaling_factor"] == pytest.approx(encoder.logit_scale)
    want = encoder.embed_texts(["a quick brown fox jumps over the lazy dog"])[0]
    np.testing.assert_allclose(text_only["text_features"][0], want, atol=1e-5)

    both = _ok(api, route, DOC_IMAGE_REQUEST)
    assert set(both) == {"image_features", "text_features", "scaling_factor"}
    assert both["scaling_factor"] == pytest.approx(encoder.logit_scale)
    assert len(both["image_features"]) == 1 and len(both["text_features"]) == 1
    png = base64.b64decode(DOC_IMAGE)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_allclose(both["image_features"][0], _image_vector(api, png), atol=1e-5)
    want = encoder.embed_texts(["x-ray chest anteroposterior Pleural Effusion"])[0]
    np.testing.assert_allclose(both["text_features"][0], want, atol=1e-5)


@pytest.mark.parametrize("which", ["pil", "ct"])
@pytest.mark.parametrize("scaling", [True, "true", "True"], ids=["bool", "true", "True"])
def test_the_sample_codes_encoding(
    api: httpx.Client, encoder: Encoder, pngs: dict[str, Path], which: str, scaling: object
) -> None:
    sample_image = pngs[which]
    encoded = base64.encodebytes(read_image(sample_image)).decode("utf-8")
    assert "\n" in encoded.rstrip("\n") and encoded.endswith("\n")  # wrapped, as sent
    data = {
        "input_data": {
            "columns": ["image", "text"],
            "index": [0],
            "data": [[encoded, "x-ray chest anteroposterior Atelectasis."]],
        },
        "params": {"get_scaling_factor": scaling},
    }
    plain = _image_vector(api, read_image(sample_image))
    for route in ROUTES:
        body = _ok(api, route, json.loads(json.dumps(data)))  # what json.dump writes
        assert body["scaling_factor"] == pytest.approx(encoder.logit_scale)
        np.testing.assert_allclose(body["image_features"][0], plain, atol=1e-5)
        assert len(body["text_features"]) == 1


@pytest.mark.parametrize("scaling", [False, "false", "False"], ids=["bool", "false", "False"])
def test_no_scaling_factor_when_declined(api: httpx.Client, scaling: object) -> None:
    body = _ok(api, "/score", _request(["text"], [["ct abdomen"]], get_scaling_factor=scaling))
    assert "scaling_factor" not in body


def test_rows_with_only_an_image_or_only_a_text(api: httpx.Client, pngs: dict[str, Path]) -> None:
    wrapped = base64.encodebytes(read_image(pngs["ct"])).decode()
    plain = _image_vector(api, read_image(pngs["ct"]))
    text = _ok(api, "/score", _request(["text"], [["ct abdomen"]]))["text_features"][0]

    mixed = _ok(api, "/v1/embed", _request(["image", "text"], [[wrapped, ""], ["", "ct abdomen"]]))
    assert len(mixed["image_features"]) == 1 and len(mixed["text_features"]) == 1
    np.testing.assert_allclose(mixed["image_features"][0], plain, atol=1e-5)
    np.testing.assert_allclose(mixed["text_features"][0], text, atol=1e-5)

    swapped = _ok(api, "/score", _request(["text", "image"], [["ct abdomen", wrapped]]))
    np.testing.assert_allclose(swapped["image_features"][0], plain, atol=1e-5)

    images_only = _ok(api, "/score", _request(["image"], [[wrapped], [wrapped]]))
    assert len(images_only["image_features"]) == 2 and images_only["text_features"] == []
    texts_only = _ok(api, "/score", _request(["text"], [["ct abdomen"], ["mri brain"]]))
    assert texts_only["image_features"] == [] and len(texts_only["text_features"]) == 2


def test_index_as_documented(api: httpx.Client) -> None:
    for index in ([0], [0, 1], 2):  # the examples send a list, the field table an integer
        body = _request(["text"], [["ct abdomen"], ["mri brain"]])
        body["input_data"]["index"] = index
        assert len(_ok(api, "/score", body)["text_features"]) == 2
    body = _request(["text"], [["ct abdomen"]])
    del body["input_data"]["index"]
    assert len(_ok(api, "/score", body)["text_features"]) == 1


def test_surrounding_whitespace_and_crlf_line_breaks(
    api: httpx.Client, pngs: dict[str, Path]
) -> None:
    data = read_image(pngs["pil"])
    plain = _image_vector(api, data)
    crlf = base64.encodebytes(data).decode().replace("\n", "\r\n")
    for value in (crlf, f"  {base64.b64encode(data).decode()}\n\t"):
        body = _ok(api, "/score", _request(["image"], [[value]]))
        np.testing.assert_allclose(body["image_features"][0], plain, atol=1e-5)


def test_garbage_is_still_invalid_base64(api: httpx.Client, pngs: dict[str, Path]) -> None:
    good = base64.b64encode(read_image(pngs["pil"])).decode()
    wrapped = base64.encodebytes(read_image(pngs["pil"])).decode()
    bad = {
        "other characters": "abc$%",
        "padding missing": "QUI",  # b"AB" is "QUI="
        "padding too long": "QUI==",
        "padding in the middle": "QQ==QUFB",
        "a space inside": good[:40] + " " + good[40:],
        "url-safe alphabet": good.replace("/", "_").replace("+", "-") + "_-",
        "a character between lines": wrapped.replace("\n", "\n*", 1),
    }
    for name, value in bad.items():
        for route in ROUTES:
            r = _post(api, route, _request(["image", "text"], [[value, "ct"]]))
            assert r.status_code == 422, (name, r.text)
            assert r.json()["error"] == "invalid base64", (name, r.text)


@pytest.mark.parametrize("scaling", ["yes", 1, "TRUE ", None])
def test_undocumented_scaling_flags_are_refused(api: httpx.Client, scaling: object) -> None:
    r = _post(api, "/score", _request(["text"], [["ct"]], get_scaling_factor=scaling))
    assert r.status_code == 422 and r.json()["error"] == "invalid request", r.text
