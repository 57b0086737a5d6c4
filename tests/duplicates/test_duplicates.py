"""Near-duplicates: re-encoded copies of pydicom images are grouped, distinct slices of a
series are not (``index duplicates`` as a subprocess); ``collapse`` on the live service."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.imaging.decode import decode_path
from indexer.pipeline.runner import run_build
from indexer.settings import ImagingSettings
from service.app import create_app
from tests.pipeline.conftest import options
from tests.series.corpus import write_series
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {KEY}"}


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("duplicates")
    source = root / "src"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm"):
        shutil.copy(_testdata(name), source / name)
    ct = Image.fromarray(
        decode_path(str(_testdata("CT_small.dcm")), ImagingSettings()).images[0].pixels
    )
    ct.save(source / "ct-export.png")
    ct.convert("L").save(source / "ct-export.jpg", quality=75)
    mr = Image.fromarray(
        decode_path(str(_testdata("MR_small.dcm")), ImagingSettings()).images[0].pixels
    )
    mr.resize((mr.width // 2, mr.height // 2)).save(source / "mr-half.png")
    write_series(source / "series", seed=11, slices=12)  # neighbouring slices hash alike
    dicomdir = _testdata("DICOMDIR")
    run_build(options([str(source), str(dicomdir)], root / "index"))
    return root / "index"


def _groups(index: Path, *extra: str) -> list[list[dict[str, object]]]:
    command = [
        sys.executable, "-m", "indexer.cli", "index", "duplicates", "--index", str(index),
        "--json", *extra,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    groups: list[list[dict[str, object]]] = json.loads(out.stdout)["groups"]
    return groups


def _names(group: list[dict[str, object]]) -> set[str]:
    return {str(m["source_uri"]).rsplit("/", 1)[-1] for m in group}


def test_copies_are_grouped_and_slices_are_not(index: Path) -> None:
    groups = _groups(index)
    named = [_names(g) for g in groups]
    assert {"CT_small.dcm", "ct-export.png", "ct-export.jpg"} in named
    assert {"MR_small.dcm", "mr-half.png"} in named
    for group in groups:  # never two instances of one series
        paths = [str(m["source_uri"]) for m in group]
        series_files = [p for p in paths if "/series/" in p or "DICOMDIR" in p or "/77654033/" in p]
        assert len(series_files) <= 1, paths
        assert all(float(str(m["distance"])) <= 10 for m in group)
    strict = [_names(g) for g in _groups(index, "--threshold", "0")]
    assert {"CT_small.dcm", "ct-export.png"} <= set().union(*strict)  # PNG: 0 bits apart


@pytest.fixture(scope="module")
def http(index: Path) -> Iterator[httpx.Client]:
    with (
        serve(create_app(settings_for(index, api_keys=[KEY])), headers=AUTH) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=60) as client,
    ):
        yield client


def test_collapse_folds_copies_into_one_result(http: httpx.Client) -> None:
    files = {"file": ("CT_small.dcm", _testdata("CT_small.dcm").read_bytes())}
    plain = http.post("/v1/search/image", files=files, data={"options": '{"k": 5}'}).json()
    top = [h["source_uri"].rsplit("/", 1)[-1] for h in plain["results"][:3]]
    assert set(top) == {"CT_small.dcm", "ct-export.png", "ct-export.jpg"}
    options = '{"k": 5, "collapse": "near_duplicates"}'
    folded = http.post("/v1/search/image", files=files, data={"options": options}).json()
    names = [h["source_uri"].rsplit("/", 1)[-1] for h in folded["results"]]
    assert len({"CT_small.dcm", "ct-export.png", "ct-export.jpg"} & set(names)) == 1
    assert folded["results"][0]["duplicates"] == 2
    assert len(names) == 5  # the page is still full


def test_neighbors_take_collapse_too(http: httpx.Client) -> None:
    """GET /v1/items/{id}/neighbors ignored ?collapse= (not a parameter of the route)."""
    files = {"file": ("CT_small.dcm", _testdata("CT_small.dcm").read_bytes())}
    hits = http.post("/v1/search/image", files=files, data={"options": '{"k": 5}'}).json()
    by_name = {h["source_uri"].rsplit("/", 1)[-1]: h["id"] for h in hits["results"]}
    item = by_name["ct-export.jpg"]  # its neighbours: CT_small.dcm and ct-export.png first
    plain = http.get(f"/v1/items/{item}/neighbors", params={"k": 5}).json()["results"]
    assert {h["source_uri"].rsplit("/", 1)[-1] for h in plain[:2]} == {
        "CT_small.dcm",
        "ct-export.png",
    }
    folded = http.get(
        f"/v1/items/{item}/neighbors", params={"k": 5, "collapse": "near_duplicates"}
    ).json()["results"]
    names = [h["source_uri"].rsplit("/", 1)[-1] for h in folded]
    assert len({"CT_small.dcm", "ct-export.png"} & set(names)) == 1, names
    assert folded[0]["duplicates"] == 1 and len(names) == 5
