"""``POST /v1/qc`` on a live server: the planted and another odd image rank high, a slice
of the indexed series low; the reference follows a newly published index version."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from tests.cli.test_cli_embed import medsearch
from tests.curate.conftest import SLICES, CurateCorpus
from tests.service.conftest import settings_for
from tests.service.live import serve


@pytest.fixture(scope="module")
def base(curate_corpus: CurateCorpus) -> Iterator[str]:
    with serve(create_app(settings_for(curate_corpus.index_dir))) as url:
        yield url


def _qc_file(base: str, path: Path, **options: object) -> httpx.Response:
    files = {"file": (path.name, path.read_bytes())}
    data = {"options": json.dumps(options)} if options else None
    return httpx.post(f"{base}/v1/qc", files=files, data=data, timeout=60)


def _qc_json(base: str, path: Path, **options: object) -> httpx.Response:
    body = {"image": base64.b64encode(path.read_bytes()).decode(), **options}
    return httpx.post(f"{base}/v1/qc", json=body, timeout=60)


def test_odd_images_rank_high_and_a_series_slice_low(
    base: str, curate_corpus: CurateCorpus
) -> None:
    planted = _qc_file(base, curate_corpus.planted)
    assert planted.status_code == 200, planted.text
    result = planted.json()
    # above every other item's score; below its own indexed copy's, which leaves itself
    # out where the upload finds it at distance 0 (9 of its 10 neighbours count)
    assert result["percentile"] == (SLICES - 1) / SLICES
    assert result["k"] == 10 and len(result["neighbors"]) == 10
    assert result["neighbors"][0]["id"] == 1 and result["neighbors"][0]["cosine"] > 0.999
    assert result["reference_items"] == result["index_items"] == SLICES
    cosines = [n["cosine"] for n in result["neighbors"]]
    assert result["score"] == pytest.approx(sum(1 - c for c in cosines) / 10, abs=1e-6)

    odd = _qc_json(base, curate_corpus.odd).json()  # noise, not indexed
    held = _qc_file(base, curate_corpus.held).json()  # the series' middle slice, not indexed
    indexed = _qc_json(base, curate_corpus.slices[0], k=3).json()
    assert odd["percentile"] == (SLICES - 1) / SLICES  # only the planted noise scores higher
    assert held["percentile"] <= 0.5
    assert indexed["k"] == 3 and indexed["neighbors"][0]["cosine"] > 0.999
    assert held["score"] < odd["score"] / 100


def test_the_reference_follows_a_new_index_version(
    curate_corpus: CurateCorpus, index_copy: Path
) -> None:
    with serve(create_app(settings_for(index_copy))) as url:
        before = _qc_json(url, curate_corpus.odd).json()
        assert _qc_json(url, curate_corpus.odd).json() == before  # cached, deterministic
        removed = medsearch("index", "remove", "--index", str(index_copy),
                            "--source-prefix", curate_corpus.planted.as_uri())  # fmt: skip
        assert removed.returncode == 0, removed.stderr[-2000:]
        deadline = time.monotonic() + 30
        after = before
        while after["index_version"] == before["index_version"] and time.monotonic() < deadline:
            time.sleep(0.2)
            after = _qc_json(url, curate_corpus.odd).json()
    assert after["index_items"] == SLICES - 1
    assert after["percentile"] == 1.0  # no noise left in the index: unlike anything in it
    assert after["score"] > before["score"]
    assert 1 not in {n["id"] for n in after["neighbors"]}


@pytest.mark.parametrize(
    ("kind", "payload", "status"),
    [
        ("json", {"image": "not base64!"}, 422),
        ("json", {"image": base64.b64encode(b"not an image").decode()}, 422),
        ("json", {"image": "aGVsbG8=", "k": 0}, 422),
        ("json", {"image": "aGVsbG8=", "k": 101}, 422),
        ("json", {"image": "aGVsbG8=", "filters": {}}, 422),
        ("options", "{not json", 422),
        ("options", '{"k": "3"}', 422),
        ("empty", "", 422),
        ("text", "hello", 415),
    ],
)
def test_bad_requests_are_refused_with_4xx(
    base: str, kind: str, payload: object, status: int
) -> None:
    url = f"{base}/v1/qc"
    if kind == "json":
        answer = httpx.post(url, json=payload, timeout=60)
    elif kind == "options":
        files = {"file": ("x.png", b"\x89PNG")}
        answer = httpx.post(url, files=files, data={"options": str(payload)}, timeout=60)
    elif kind == "empty":
        answer = httpx.post(url, files={"file": ("x.png", b"")}, timeout=60)
    else:
        answer = httpx.post(url, content=str(payload), timeout=60)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "detail"}


def test_an_index_of_one_item_is_refused_with_409(
    curate_corpus: CurateCorpus, index_copy: Path
) -> None:
    series_uid = curate_corpus.slices[0].parent.name
    removed = medsearch("index", "remove", "--index", str(index_copy), "--uid", series_uid)
    assert removed.returncode == 0, removed.stderr[-2000:]
    with serve(create_app(settings_for(index_copy))) as url:
        answer = _qc_file(url, curate_corpus.planted)
    assert answer.status_code == 409 and answer.json()["error"] == "too few items"
