"""Bad input: each a 4xx with a JSON {error, detail}, no traceback, and the server stays up."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

pytestmark = pytest.mark.slow


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _good_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buf, format="PNG")
    return buf.getvalue()


def _check(r: object, allowed: tuple[int, ...]) -> dict[str, object]:
    response = r  # a httpx.Response
    status = response.status_code  # type: ignore[attr-defined]
    assert status in allowed, (status, response.text)  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "detail"}
    text = response.text  # type: ignore[attr-defined]
    assert "Traceback" not in text and "/work/" not in text and ".py" not in text
    return body  # type: ignore[no-any-return]


CASES = {
    "invalid base64": lambda c: c.post("/v1/search/image", json={"image": "@@not base64@@"}),
    "truncated png": lambda c: c.post(
        "/v1/search/image", json={"image": base64.b64encode(_good_png()[:40]).decode()}
    ),
    "dicom SR": lambda c: c.post(
        "/v1/search/image",
        files={"file": ("sr.dcm", Path(get_testdata_file("test-SR.dcm") or "").read_bytes())},
    ),
    "40000x40000 header bomb": lambda c: c.post(
        "/v1/search/image", files={"file": ("bomb.png", _png(40000, 40000), "image/png")}
    ),
    "empty body": lambda c: c.post(
        "/v1/search/image", content=b"", headers={"content-type": "application/json"}
    ),
    "empty text body": lambda c: c.post("/v1/search/text", content=b""),
    "wrong content type": lambda c: c.post(
        "/v1/search/image", content=b"GIF89a", headers={"content-type": "image/gif"}
    ),
    "unknown fields": lambda c: c.post("/v1/search/text", json={"text": "ct", "kk": 3}),
    "unknown filter": lambda c: c.post(
        "/v1/search/text", json={"text": "ct", "filters": {"patient_name": "x"}}
    ),
    "k = 0": lambda c: c.post("/v1/search/text", json={"text": "ct", "k": 0}),
    "k = 10^6": lambda c: c.post("/v1/search/text", json={"text": "ct", "k": 10**6}),
    "neighbors k = 10^6": lambda c: c.get("/v1/items/1/neighbors", params={"k": 10**6}),
    "text too long": lambda c: c.post("/v1/search/text", json={"text": "a" * 5000}),
    "1001 multipart parts": lambda c: c.post(
        "/v1/search/image",
        files=[("file", ("a.png", _good_png(), "image/png"))]
        + [(f"f{i}", (None, "x")) for i in range(1000)],
    ),
    "2 GB Content-Length": lambda c: c.post(
        "/v1/search/image",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(2 * 1024**3)},
    ),
    "azure row shape": lambda c: c.post(
        "/score", json={"input_data": {"columns": ["image", "text"], "data": [["only one"]]}}
    ),
    "azure empty rows": lambda c: c.post(
        "/score", json={"input_data": {"columns": ["text"], "data": [[""]]}}
    ),
    "classify no labels": lambda c: c.post("/v1/classify", json={"image": "aGk=", "labels": []}),
    "item id not a number": lambda c: c.get("/v1/items/abc"),
    "thumbnail size": lambda c: c.get("/v1/items/1/thumbnail", params={"size": 100000}),
    "exclude study of a PNG": lambda c: c.post(
        "/v1/search/image",
        json={"image": base64.b64encode(_good_png()).decode(), "exclude_same_study": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_4xx_and_the_server_stays_up(client: TestClient, case: str) -> None:
    body = _check(CASES[case](client), (400, 404, 413, 415, 422))
    assert body["error"]
    assert client.get("/healthz").status_code == 200
