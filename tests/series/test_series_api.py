"""``POST /v1/search/series`` on the live server over HTTP, with API keys as deployed:
series, studies, uploaded slices (multipart and base64), re-ranking, filters, thresholds,
links, errors; and ``index search --level`` as a subprocess."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.series.conftest import SeriesCorpus
from tests.service.conftest import KEY, TEST_MODEL, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}
VIEWER = (
    "http://viewer.invalid/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"
)
WADO = "http://pacs.invalid/dicom-web"


@pytest.fixture(scope="module")
def http(series_corpus: SeriesCorpus) -> Iterator[httpx.Client]:
    settings = settings_for(
        series_corpus.index_dir, api_keys=[KEY], viewer_url_template=VIEWER, wado_base_url=WADO
    )
    with (
        serve(create_app(settings), headers=AUTH) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as client,
    ):
        yield client


def _search(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/search/series", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _upload(http: httpx.Client, paths: list[Path], **options: Any) -> dict[str, Any]:
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    response = http.post("/v1/search/series", files=files, data={"options": json.dumps(options)})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_series_finds_itself_first(http: httpx.Client, series_corpus: SeriesCorpus) -> None:
    for series in series_corpus.series:
        body = _search(http, series_uid=series.series_uid, k=5)
        first = body["results"][0]
        assert first["series_instance_uid"] == series.series_uid
        assert first["score"] >= 0.999
        assert first["instances"] == len(series.paths)
        assert first["modality"] == series.modality
        uids = [r["series_instance_uid"] for r in body["results"]]
        assert len(set(uids)) == len(uids)  # one result per series
        assert body["level"] == "series" and body["pooling"] == "mean"
        assert body["reranked"] is False and "cosine" in body["scoring"]


def test_one_held_back_slice_finds_its_series(
    http: httpx.Client, series_corpus: SeriesCorpus
) -> None:
    for uid, path in series_corpus.held.items():
        first = _upload(http, [path], k=3)["results"][0]
        assert first["series_instance_uid"] == uid
        best = first["best_items"]
        assert best and best[0]["score"] >= best[-1]["score"]
        thumb = http.get(best[0]["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"


def test_several_slices_are_pooled_and_reranked(
    http: httpx.Client, series_corpus: SeriesCorpus
) -> None:
    series = series_corpus.series[3]
    slices = series.paths[::10]
    pooled = _upload(http, slices, k=3)
    assert pooled["results"][0]["series_instance_uid"] == series.series_uid
    reranked = _upload(http, slices, k=3, rerank=True)
    assert reranked["reranked"] is True and "late interaction" in reranked["scoring"]
    assert reranked["results"][0]["series_instance_uid"] == series.series_uid
    assert reranked["results"][0]["score"] >= 0.999  # each slice is in the series
    as_json = _search(http, images=[base64.b64encode(p.read_bytes()).decode() for p in slices], k=3)
    assert as_json["results"][0]["series_instance_uid"] == series.series_uid
    assert as_json["results"][0]["score"] == pytest.approx(pooled["results"][0]["score"], abs=1e-5)


def test_studies(http: httpx.Client, series_corpus: SeriesCorpus) -> None:
    series = series_corpus.series[1]
    body = _search(http, study_uid=series.study_uid, level="study", k=3)
    assert body["results"] == [] and body["level"] == "study"
    first = body["studies"][0]
    assert first["study_instance_uid"] == series.study_uid
    assert first["score"] >= 0.999
    assert [s["series_instance_uid"] for s in first["series"]] == [series.series_uid]
    assert first["viewer_url"].startswith("http://viewer.invalid/viewer?StudyInstanceUIDs=")
    text = _search(http, text="ct chest axial", level="study", k=50)
    scores = [s["score"] for s in text["studies"]]
    assert scores == sorted(scores, reverse=True)


def test_filters_threshold_and_links(http: httpx.Client, series_corpus: SeriesCorpus) -> None:
    text = _search(http, text="mr brain", k=100, filters={"modality": ["MR"]})
    assert text["results"] and {r["modality"] for r in text["results"]} == {"MR"}
    scores = [r["score"] for r in text["results"]]
    threshold = scores[len(scores) // 2]
    kept = _search(http, text="mr brain", k=100, filters={"modality": ["MR"]}, min_score=threshold)
    assert kept["results"] and all(r["score"] >= threshold for r in kept["results"])
    assert len(kept["results"]) < len(text["results"]) or threshold == scores[-1]
    none = _search(http, text="mr brain", k=10, min_score=1.0)
    assert none["results"] == []
    series = series_corpus.series[0]
    first = _search(http, series_uid=series.series_uid, k=1)["results"][0]
    assert first["viewer_url"] == VIEWER.format(
        study_uid=series.study_uid, series_uid=series.series_uid
    )
    assert first["wado_url"] == f"{WADO}/studies/{series.study_uid}/series/{series.series_uid}"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"text": "ct", "series_uid": "1.2.3"}, 422),
        ({"series_uid": "1.2.3.999"}, 404),
        ({"study_uid": "1.2.3.999"}, 404),
        ({"series_uid": "not-a-uid"}, 422),
        ({"images": ["%%%"]}, 422),
        ({"text": "ct", "k": 100000}, 422),
        ({"text": "ct", "level": "study", "rerank": True}, 422),
        ({"text": "ct", "level": "patient"}, 422),
    ],
)
def test_bad_requests_get_a_4xx(http: httpx.Client, body: dict[str, Any], status: int) -> None:
    response = http.post("/v1/search/series", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_bad_multipart_gets_a_4xx(http: httpx.Client, series_corpus: SeriesCorpus) -> None:
    path = series_corpus.series[0].paths[0]
    cases = [
        ({"files": [("other", ("a", b"x"))]}, 422),
        ({"files": [("file", ("a.dcm", path.read_bytes()))], "data": {"options": "[1]"}}, 422),
        (
            {
                "files": [("file", ("a.dcm", path.read_bytes()))],
                "data": {"options": json.dumps({"text": "ct"})},
            },
            422,
        ),
        ({"files": [("file", ("a.dcm", b"not an image"))]}, 422),
        ({"files": [("file", ("a.dcm", b""))]}, 422),
    ]
    for kwargs, status in cases:
        response = http.post("/v1/search/series", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
    assert (
        http.post(
            "/v1/search/series", json={"text": "ct"}, headers={"Authorization": ""}
        ).status_code
        == 401
    )


def test_cli_search_by_level(series_corpus: SeriesCorpus) -> None:
    held = next(iter(series_corpus.held.items()))
    for level in ("series", "study"):
        out = subprocess.run(
            [
                sys.executable, "-m", "indexer.cli", "index", "search",
                "--index", str(series_corpus.index_dir), "--model", str(TEST_MODEL),
                "--image", str(held[1]), "-k", "2", "--level", level,
            ],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == 2
        if level == "series":
            assert lines[0]["series_instance_uid"] == held[0]
            assert lines[0]["best_source_uri"].startswith("file://")
        else:
            assert held[0] in lines[0]["series"]
