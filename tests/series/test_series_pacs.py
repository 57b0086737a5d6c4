"""``series_uid`` of a series the catalog does not hold: its slices come from the PACS (a
real Orthanc), are embedded and pooled, and find the indexed series with the same pixels."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from service.app import create_app
from tests.pacs.orthanc import PASSWORD, USER, orthanc
from tests.series.conftest import SeriesCorpus
from tests.service.conftest import settings_for

pytestmark = pytest.mark.slow


def test_a_series_from_the_pacs_finds_its_indexed_twin(
    series_corpus: SeriesCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_USERNAME", USER)
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_PASSWORD", PASSWORD)
    original = series_corpus.series[4]
    twin_uid, study_uid = generate_uid(), generate_uid()
    copies = []
    for n, path in enumerate(original.paths):  # same pixels, a series the catalog lacks
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, twin_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copies.append(tmp_path / f"{n:03d}.dcm")
        ds.save_as(copies[-1])
    with orthanc(tmp_path / "orthanc") as pacs:
        assert len(pacs.upload(copies)) == len(copies)
        settings = settings_for(series_corpus.index_dir, pacs_url=pacs.dicomweb)
        with TestClient(create_app(settings)) as client:
            body = client.post("/v1/search/series", json={"series_uid": twin_uid, "k": 3})
            assert body.status_code == 200, body.text
            first = body.json()["results"][0]
            assert first["series_instance_uid"] == original.series_uid
            assert first["score"] >= 0.99
            missing = client.post("/v1/search/series", json={"series_uid": generate_uid()})
            assert missing.status_code == 404
