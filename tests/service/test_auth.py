"""API keys on every route (thumbnails included); safe binding rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.config import ServiceSettings
from tests.service.conftest import KEY

pytestmark = pytest.mark.slow

ROUTES = [
    ("get", "/healthz", None),
    ("get", "/readyz", None),
    ("get", "/metrics", None),
    ("post", "/v1/search/text", {"text": "ct"}),
    ("post", "/v1/search/image", {"image": "aGk="}),
    ("get", "/v1/items/1", None),
    ("get", "/v1/items/1/thumbnail", None),
    ("get", "/v1/items/1/neighbors", None),
    ("post", "/score", {"input_data": {"columns": ["text"], "data": [["ct"]]}}),
    ("post", "/v1/embed", {"input_data": {"columns": ["text"], "data": [["ct"]]}}),
    ("post", "/v1/classify", {"image": "aGk=", "labels": ["a"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_a_key(
    keyed_client: TestClient, method: str, path: str, body: object
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": KEY}):
        r = (
            getattr(keyed_client, method)(path, json=body, headers=headers)
            if body
            else getattr(keyed_client, method)(path, headers=headers)
        )
        assert r.status_code == 401, (path, headers)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] == "unauthorized"
    good = {"Authorization": f"Bearer {KEY}"}
    r = (
        getattr(keyed_client, method)(path, json=body, headers=good)
        if body
        else getattr(keyed_client, method)(path, headers=good)
    )
    assert r.status_code != 401


@pytest.mark.parametrize("path", [p for m, p, _ in ROUTES if m == "post"] + ["/v1/search/dicom"])
def test_no_key_is_401_before_the_body_is_read(keyed_client: TestClient, path: str) -> None:
    """Before, a body that was not JSON got 422 'JSON decode error' without a key."""
    for body in (b"{not json", b"[" * 10_000, b"\x00\xff" * 100):
        r = keyed_client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == "unauthorized"


def test_the_page_and_the_api_description_need_no_key(keyed_client: TestClient) -> None:
    for path in ("/", "/openapi.json", "/docs"):
        assert keyed_client.get(path).status_code == 200, path


def test_open_bind_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="without API keys"):
        ServiceSettings(index_dir=tmp_path, model_dir=tmp_path, host="0.0.0.0")
    ServiceSettings(index_dir=tmp_path, model_dir=tmp_path, host="0.0.0.0", api_keys=[KEY])
    ServiceSettings(
        index_dir=tmp_path, model_dir=tmp_path, host="0.0.0.0", allow_unauthenticated=True
    )
    with pytest.raises(ValidationError, match="at least 16"):
        ServiceSettings(index_dir=tmp_path, model_dir=tmp_path, api_keys=["short"])
