"""Build from a real Orthanc over DICOMweb, sync incrementally, search by UID, and survive
a PACS that is down or slow."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from indexer.errors import SourceError
from indexer.pipeline.runner import open_catalog, run_build
from indexer.sources.dicomweb import DicomWebSource
from indexer.sources.dicomweb_client import DicomWebSettings
from service.app import create_app
from tests.pacs.orthanc import PASSWORD, USER, Orthanc, orthanc
from tests.pipeline.conftest import TEST_MODEL, corpus_dir, options
from tests.service.conftest import settings_for
from tests.service.live import http_server

pytestmark = pytest.mark.slow
AUTH = {"MEDSEARCH_DICOMWEB_USERNAME": USER, "MEDSEARCH_DICOMWEB_PASSWORD": PASSWORD}


def _image_files() -> list[Path]:
    """Distinct single-frame images (one per SOP Instance UID) from pydicom's files."""
    seen: set[str] = set()
    out = []
    for path in sorted(corpus_dir().glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.get("SOPInstanceUID", ""))
            single = int(ds.get("NumberOfFrames", 1) or 1) == 1
        except Exception:  # noqa: BLE001 - the corpus has deliberately broken files
            continue
        if ds.get("Rows") and uid and uid not in seen and single:
            seen.add(uid)
            out.append(path)
    return out


@pytest.fixture()
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orthanc]:
    for key, value in AUTH.items():
        monkeypatch.setenv(key, value)
    with orthanc(tmp_path / "orthanc") as server:
        yield server


def test_build_sync_and_search_by_uid(pacs: Orthanc, tmp_path: Path) -> None:
    files = _image_files()
    first, later = files[:12], files[12:18]
    stored = pacs.upload(first)  # Orthanc itself refuses a few malformed corpus files
    assert len(stored) >= 8
    spec = "dicomweb+" + pacs.dicomweb
    index_dir = tmp_path / "index"

    report = run_build(options([spec], index_dir)).to_dict()
    n_first = report["indexed"] + report["duplicates"] + sum(report["failed"].values())
    assert n_first == len(stored)
    assert report["indexed"] >= 8
    catalog = open_catalog(index_dir)
    try:
        uris = {row.source_uri for row in catalog.items(range(1, 100)).values()}
    finally:
        catalog.close()
    assert all(u.startswith(spec + "/studies/") for u in uris)

    added = pacs.upload(later)
    assert added
    again = run_build(options([spec], index_dir)).to_dict()
    assert again["skipped"] == {"skipped: already in catalog": len(stored)}  # not refetched
    assert again["indexed"] + again["duplicates"] + sum(again["failed"].values()) == len(added)

    ds = next(
        d
        for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in first)
        if str(d.SOPInstanceUID) in stored and d.get("Modality") in ("CT", "MR")
    )
    settings = settings_for(
        index_dir,
        pacs_url=pacs.dicomweb,
        viewer_url_template="http://viewer/viewer?StudyInstanceUIDs={study_uid}",
    )
    with TestClient(create_app(settings)) as client:
        body = {
            "study_uid": str(ds.StudyInstanceUID),
            "series_uid": str(ds.SeriesInstanceUID),
            "sop_uid": str(ds.SOPInstanceUID),
            "k": 3,
        }
        r = client.post("/v1/search/dicom", json=body)
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["sop_instance_uid"] == str(ds.SOPInstanceUID)
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        assert top["viewer_url"] == f"http://viewer/viewer?StudyInstanceUIDs={ds.StudyInstanceUID}"
        assert top["wado_url"].endswith(f"/instances/{ds.SOPInstanceUID}")
        series_only = client.post(
            "/v1/search/dicom",
            json={"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID)},
        )
        assert series_only.status_code == 200
        missing = client.post("/v1/search/dicom", json={"study_uid": "1.2.3.4.5.6.7"})
        assert missing.status_code == 404
        bad = client.post("/v1/search/dicom", json={"study_uid": "../../etc/passwd"})
        assert bad.status_code == 422
        thumb = client.get(f"/v1/items/{top['id']}/thumbnail")
        assert thumb.status_code == 200  # read back from the PACS by its URI


def test_modality_filter(pacs: Orthanc) -> None:
    files = _image_files()[:12]
    pacs.upload(files)
    modalities = {str(pydicom.dcmread(f, stop_before_pixels=True).get("Modality")) for f in files}
    assert "MR" in modalities
    source = DicomWebSource(f"dicomweb+{pacs.dicomweb}?modality=MR")
    try:
        items = list(source)
    finally:
        source.close()
    expected = sum(
        1 for f in files if "MR" in str(pydicom.dcmread(f, stop_before_pixels=True).get("Modality"))
    )
    assert 0 < len(items) <= len(files) and len(items) >= expected


def test_paging_lists_every_instance_once(pacs: Orthanc) -> None:
    files = _image_files()[:7]
    pacs.upload(files)
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    for page_size in (2, 3, 100):  # QIDO-RS offset/limit for studies and instances
        source = DicomWebSource(f"dicomweb+{pacs.dicomweb}", DicomWebSettings(page_size=page_size))
        try:
            uris = [item.uri for item in source]
        finally:
            source.close()
        assert len(uris) == len(set(uris)) == len(expected), page_size
        assert {uri.rsplit("/", 1)[1] for uri in uris} == expected


def test_pacs_down_is_a_clear_error_and_the_run_resumes(pacs: Orthanc, tmp_path: Path) -> None:
    files = _image_files()[:8]
    pacs.upload(files)
    spec = "dicomweb+" + pacs.dicomweb
    index_dir = tmp_path / "index"
    pacs.stop()
    env = {**os.environ, **AUTH, "MEDSEARCH_DICOMWEB_RETRIES": "1"}
    run = subprocess.run(
        [
            sys.executable, "-m", "indexer.cli", "index", "build", spec, "--index",
            str(index_dir), "--model", str(TEST_MODEL), "--no-progress",
        ],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert "cannot reach the PACS" in run.stderr and "Traceback" not in run.stderr
    pacs.start()
    report = run_build(options([spec], index_dir)).to_dict()
    assert report["indexed"] >= 5


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(2.0)
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_slow_pacs_times_out_with_retries() -> None:
    with http_server(_SlowHandler) as base:
        settings = DicomWebSettings(timeout_s=0.5, retries=2, backoff_s=0.05)
        source = DicomWebSource(f"dicomweb+{base}/dicom-web", settings)
        started = time.monotonic()
        with pytest.raises(SourceError, match="cannot reach the PACS .*gave up after 3 tries"):
            list(source)
        assert time.monotonic() - started < 10
        source.close()
