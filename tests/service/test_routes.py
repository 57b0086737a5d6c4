"""Every route's contract over a real index; an uploaded indexed image finds itself."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.imaging import decode_path
from indexer.settings import ImagingSettings

pytestmark = pytest.mark.slow


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["items"] > 50
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    for name in ("medsearch_requests_total", "medsearch_index_vectors", "medsearch_queue_depth"):
        assert name in metrics.text


def test_text_search(client: TestClient) -> None:
    r = client.post("/v1/search/text", json={"text": "x-ray chest anteroposterior", "k": 5})
    assert r.status_code == 200
    body = r.json()
    scores = [(-h["score"], h["id"]) for h in body["results"]]
    assert len(scores) == 5 and scores == sorted(scores)
    hit = body["results"][0]
    assert hit["thumbnail_url"] == f"/v1/items/{hit['id']}/thumbnail"
    assert body["index_version"] and body["model_fingerprint"]


def test_upload_of_an_indexed_dicom_returns_itself_first(client: TestClient) -> None:
    data = _bytes("MR_small.dcm")
    files = {"file": ("q.dcm", data, "application/dicom")}
    r = client.post("/v1/search/image", files=files, data={"options": json.dumps({"k": 3})})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["source_uri"].endswith("/MR_small.dcm")
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["metadata"]["modality"] == "MR"


def test_base64_json_png_and_filters(client: TestClient, tmp_path: Path) -> None:
    pixels = decode_path(get_testdata_file("CT_small.dcm") or "", ImagingSettings()).images[0]
    png = tmp_path / "ct.png"
    Image.fromarray(pixels.pixels).save(png)
    body = {"image": _b64(png.read_bytes()), "k": 3, "filters": {"modality": ["CT"]}}
    r = client.post("/v1/search/image", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["source_uri"].endswith("/CT_small.dcm")
    assert all(h["metadata"]["modality"] == "CT" for h in results)


def test_exclude_own_study_and_group_by(client: TestClient) -> None:
    data = _bytes("CT_small.dcm")
    own = client.post("/v1/search/image", json={"image": _b64(data), "k": 5}).json()
    study = own["results"][0]["study_instance_uid"]
    r = client.post(
        "/v1/search/image", json={"image": _b64(data), "k": 5, "exclude_same_study": True}
    )
    assert r.status_code == 200
    assert all(h["study_instance_uid"] != study for h in r.json()["results"])
    grouped = client.post(
        "/v1/search/text", json={"text": "ct", "k": 10, "group_by": "series"}
    ).json()["results"]
    series = [h["series_instance_uid"] or h["id"] for h in grouped]
    assert len(series) == len(set(series))


def test_neighbors_item_and_thumbnail(client: TestClient) -> None:
    hit = client.post("/v1/search/text", json={"text": "mr", "k": 1}).json()["results"][0]
    item_id = hit["id"]
    neighbours = client.get(f"/v1/items/{item_id}/neighbors", params={"k": 4}).json()
    assert len(neighbours["results"]) == 4
    assert all(h["id"] != item_id for h in neighbours["results"])
    item = client.get(f"/v1/items/{item_id}").json()
    assert item["id"] == item_id and item["source_uri"] == hit["source_uri"]
    thumb = client.get(f"/v1/items/{item_id}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    from io import BytesIO

    assert max(Image.open(BytesIO(thumb.content)).size) <= 64
    assert client.get("/v1/items/999999").status_code == 404
    assert client.get("/v1/items/999999/thumbnail").status_code == 404


def test_azure_documented_request_verbatim(client: TestClient, encoder: Encoder) -> None:
    png_path = Path(__file__).parent / "cxr.png"
    pixels = decode_path(get_testdata_file("CT_small.dcm") or "", ImagingSettings()).images[0]
    Image.fromarray(pixels.pixels).save(png_path)
    try:
        request = {
            "input_data": {
                "columns": ["image", "text"],
                "index": [0],
                "data": [[_b64(png_path.read_bytes()), "x-ray chest anteroposterior Atelectasis"]],
            },
            "params": {"get_scaling_factor": True},
        }
        r = client.post("/score", json=request)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"image_features", "text_features", "scaling_factor"}
        assert body["scaling_factor"] == pytest.approx(encoder.logit_scale)
        want = encoder.embed_texts(["x-ray chest anteroposterior Atelectasis"])[0]
        np.testing.assert_allclose(body["text_features"][0], want, atol=1e-5)
        assert len(body["image_features"][0]) == want.shape[0]
        mixed = {
            "input_data": {
                "columns": ["image", "text"],
                "index": [0, 1],
                "data": [[_b64(png_path.read_bytes()), ""], ["", "ct abdomen"]],
            },
            "params": {"get_scaling_factor": False},
        }
        body = client.post("/v1/embed", json=mixed).json()
        assert len(body["image_features"]) == 1 and len(body["text_features"]) == 1
        assert "scaling_factor" not in body
    finally:
        png_path.unlink()


def test_classify(client: TestClient) -> None:
    image = _b64(_bytes("CT_small.dcm"))
    labels = ["ct abdomen", "x-ray chest", "mri brain"]
    body = client.post("/v1/classify", json={"image": image, "labels": labels}).json()
    probs = [r["probability"] for r in body["results"]]
    assert [r["label"] for r in body["results"]] == labels
    assert sum(probs) == pytest.approx(1.0)
    multi = client.post(
        "/v1/classify", json={"image": image, "labels": labels, "multilabel": True}
    ).json()
    assert all(0.0 < r["probability"] < 1.0 for r in multi["results"])
