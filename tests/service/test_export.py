"""The catalog as CSV: ``GET /v1/items/export`` on the live server (filters, label
columns, paging by id, refusals) and ``index search --format csv`` as a subprocess."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.pipeline.runner import run_build
from service.app import create_app
from tests.conftest import copy_testdata
from tests.pipeline.conftest import options
from tests.service.conftest import KEY, TEST_MODEL, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}
FILES = {"CT_small.dcm": "chest", "MR_small.dcm": "head", "JPEG2000.dcm": "chest"}
GERMAN = {"chest": "Brustkorb", "head": "Schädel"}  # a column named and valued in German


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    source = copy_testdata(root / "src", FILES)
    sidecar = root / "labels.csv"
    rows = "".join(f"{n},{o},{GERMAN[o]}\n" for n, o in FILES.items())
    sidecar.write_text("path,organ,Körperteil\n" + rows, encoding="utf-8")
    run_build(options([str(source)], root / "index", sidecar=sidecar))
    return root / "index"


@pytest.fixture(scope="module")
def http(labelled_index: Path) -> Iterator[httpx.Client]:
    settings = settings_for(labelled_index, api_keys=[KEY])
    with (
        serve(create_app(settings), headers=AUTH) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as client,
    ):
        yield client


def _rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def test_export_everything_with_label_columns(http: httpx.Client) -> None:
    rows = _rows(http.get("/v1/items/export"))
    assert len(rows) == len(FILES)
    assert [int(r["id"]) for r in rows] == sorted(int(r["id"]) for r in rows)
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in rows}
    assert {n: r["label:organ"] for n, r in by_name.items()} == FILES
    assert by_name["MR_small.dcm"]["modality"] == "MR"
    assert "phi" not in rows[0] and "embedding" not in rows[0]


def test_export_filters_and_pages(http: httpx.Client) -> None:
    chest = _rows(http.get("/v1/items/export", params={"label": "organ=chest"}))
    assert {r["label:organ"] for r in chest} == {"chest"} and len(chest) == 2
    mr = _rows(http.get("/v1/items/export", params={"modality": "MR"}))
    assert [r["modality"] for r in mr] == ["MR"]
    first = _rows(http.get("/v1/items/export", params={"limit": 2}))
    rest = _rows(http.get("/v1/items/export", params={"after_id": first[-1]["id"]}))
    every = _rows(http.get("/v1/items/export"))
    assert [r["id"] for r in first + rest] == [r["id"] for r in every]


def test_a_column_named_outside_ascii_filters(http: httpx.Client) -> None:
    """SQLite matches JSON keys as stored: ``Körperteil`` must not be stored escaped."""
    chest = _rows(http.get("/v1/items/export", params={"label": "Körperteil=Brustkorb"}))
    assert len(chest) == 2 and {r["label:organ"] for r in chest} == {"chest"}
    head = _rows(http.get("/v1/items/export", params={"label": "Körperteil=Schädel"}))
    assert [r["label:Körperteil"] for r in head] == ["Schädel"]


@pytest.mark.parametrize(
    "params",
    [{"label": "organ"}, {"label": "=x"}, {"label": ["organ=chest", "organ=head"]},
     {"limit": "0"}, {"after_id": "-1"}, {"study_date_from": "yesterday"}],
)  # fmt: skip
def test_bad_export_parameters_get_a_422(http: httpx.Client, params: dict[str, Any]) -> None:
    response = http.get("/v1/items/export", params=params)
    assert response.status_code == 422, response.text


def test_cli_search_as_csv(labelled_index: Path) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "indexer.cli", "index", "search", "--index",
            str(labelled_index), "--model", str(TEST_MODEL), "--text", "ct chest", "-k", "3",
            "--format", "csv",
        ],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3
    assert list(rows[0]) == ["id", "score", "source_uri", "sop_instance_uid", "frame", "modality"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
