"""A result's viewer link (the compose file's template) opens the real OHIF viewer (the
pinned ``@ohif/app`` dist) on the result's study, series and image, read from a real
Orthanc, in headless Chromium.

The study has two series: an MR series of four slices (series 1, what OHIF shows first on
its own) and a CT series of three (series 2). The query is the last CT slice; its link must
put that slice of the CT series in the viewport. Screenshot: tests/artifacts/web/."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from indexer.pipeline.runner import run_build
from service.app import create_app
from tests.pacs.orthanc import Orthanc, orthanc
from tests.pipeline.conftest import options
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve
from tests.viewer.ohif import Viewer, compose_link_template, ohif_viewer

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "web"
WAIT_S = 45
# what the viewport shows: [study, series, SOP instance] of its current image
SHOWN_JS = """
const cs = window.cornerstone;
const element = cs && cs.getEnabledElements()[0];
const id = element && element.viewport.getCurrentImageId();
const meta = id && cs.metaData.get('instance', id);
return meta ? [meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID] : null;
"""
# the share of the viewport canvas's pixels that are not black (cornerstone renders with
# WebGL off-screen and draws the result on this 2D canvas, which OHIF's panels do not cover)
LIT_JS = """
const canvas = window.cornerstone.getEnabledElements()[0].viewport.getCanvas();
const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
let lit = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 48) lit++;
return lit / Math.max(1, canvas.width * canvas.height);
"""


def _series(source: str, study: str, number: int, slices: int, out: Path) -> list[Path]:
    """``slices`` distinct images of one new series in ``study`` (shifted copies of a pydicom
    test image), one patient, written to ``out``."""
    template = get_testdata_file(source)
    assert template is not None, source
    series, paths = generate_uid(), []
    for i in range(slices):
        ds = pydicom.dcmread(template)
        pixels = np.roll(ds.pixel_array, shift=7 * i, axis=(0, 1))
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = "MEDSEARCH-OHIF", "Viewer^Test"
        ds.SeriesNumber, ds.InstanceNumber = number, i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.SliceLocation = 5.0 * i
        paths.append(out / f"{source.split('_')[0]}-{i + 1}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("study")
    uid = generate_uid()
    return {
        "MR": _series("MR_small.dcm", uid, 1, 4, out),
        "CT": _series("CT_small.dcm", uid, 2, 3, out),
    }


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, study: dict[str, list[Path]]
) -> Iterator[Orthanc]:
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        files = [p for paths in study.values() for p in paths]
        assert len(server.upload(files)) == len(files)
        yield server


@pytest.fixture(scope="module")
def viewer(pacs: Orthanc) -> Iterator[Viewer]:
    with ohif_viewer(pacs) as served:
        yield served


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, study: dict[str, list[Path]], viewer: Viewer
) -> Iterator[str]:
    index_dir = tmp_path_factory.mktemp("index")
    folder = study["CT"][0].parent
    report = run_build(options([str(folder)], index_dir))
    assert report.indexed == sum(len(paths) for paths in study.values()), report
    settings = settings_for(
        index_dir, api_keys=[KEY], viewer_url_template=compose_link_template(viewer.url)
    )
    with serve(create_app(settings), headers={"Authorization": f"Bearer {KEY}"}) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium and chromium-driver (Debian) are not installed")
    from selenium.webdriver.chrome.service import Service

    chrome = webdriver.ChromeOptions()
    chrome.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--enable-unsafe-swiftshader",  # WebGL in software: no GPU here
        "--window-size=1400,900",
    ):
        chrome.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=chrome)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)


def _uids(record: dict[str, Any]) -> list[str]:
    return [record[f"{level}_instance_uid"] for level in ("study", "series", "sop")]


def test_viewer_link_opens_ohif_at_the_results_series_and_image(
    browser: Any, api: str, viewer: Viewer, study: dict[str, list[Path]]
) -> None:
    from selenium.common.exceptions import TimeoutException

    query = study["CT"][-1]
    r = httpx.post(
        f"{api}/v1/search/image",
        files={"file": (query.name, query.read_bytes(), "application/dicom")},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    ds = pydicom.dcmread(query, stop_before_pixels=True)
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
    assert _uids(first) == uids  # the query itself
    assert first["viewer_url"].startswith(f"{viewer.url}/viewer?StudyInstanceUIDs={uids[0]}&")

    browser.get(first["viewer_url"])
    with contextlib.suppress(TimeoutException):  # then say what it shows
        _wait(browser, lambda d: d.execute_script(SHOWN_JS) == uids)
    assert browser.execute_script(SHOWN_JS) == uids, "OHIF shows another image than the result's"
    _wait(browser, lambda d: d.execute_script(LIT_JS) > 0.3)  # the CT fills ~65% of it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "ohif-viewer.png"))
    # through the proxy, from Orthanc: the result's image is the first one OHIF fetched
    frames = [p for p in viewer.requested if "/frames/" in p]
    assert frames, viewer.requested
    assert frames[0].startswith(f"studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/")
