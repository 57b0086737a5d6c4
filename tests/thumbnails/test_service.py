"""Thumbnails under each MEDSEARCH_THUMBNAIL_POLICY through a live server, on a real index
of deid-data's burned-in files, pydicom's US files and an unflagged CT; the policy in
``/readyz`` and in ``medsearch index stats``."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from indexer.imaging.burned_in import read_text_regions
from indexer.pipeline.runner import run_build
from service.app import create_app
from service.thumbnails import MASKED_HEADER, NO_REGION, POLICY_OFF, WITHHELD_HEADER
from tests.pipeline.conftest import options
from tests.service.conftest import settings_for
from tests.service.live import serve
from tests.thumbnails.test_burned_in import DEID, GREY_US, RGB_US, SCREENSHOT, pydicom_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
US_REGIONS_ONLY = DEID / "ultrasounds" / "ultrasound-multiframe.dcm"  # no device rule
FILES = {
    "grey_us": GREY_US,  # masked: ultrasound regions + the EPIQ header band
    "rgb_us": RGB_US,  # masked: ultrasound regions + the S2000 header band
    "us_regions": US_REGIONS_ONLY,  # masked: ultrasound regions only (43 MB, 26 frames)
    "screenshot": SCREENSHOT,  # secondary capture: withheld
    "ctbrain": DEID / "humans" / "ctbrain1.dcm",  # CT stored as SC: withheld
    "us1_j2kr": pydicom_file("US1_J2KR.dcm"),  # GE LOGIQ 700, no known region: withheld
    "ct": pydicom_file("CT_small.dcm"),  # not at risk
}
MASKED = {"grey_us", "rgb_us", "us_regions"}
WITHHELD = {"screenshot", "ctbrain", "us1_j2kr"}
SIZE = 256


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    root = tmp_path_factory.mktemp("burned-in")
    folder = root / "images"
    folder.mkdir()
    for name, path in FILES.items():
        try:
            os.link(path, folder / f"{name}.dcm")  # the 43 MB file is not copied
        except OSError:
            shutil.copy(path, folder / f"{name}.dcm")
    report = run_build(options([str(folder)], root / "index"))
    assert report.indexed == len(FILES) and not report.failed, report
    with sqlite3.connect(root / "index" / "catalog.sqlite3") as db:
        rows = db.execute("SELECT id, source_uri FROM items WHERE status = 'active'").fetchall()
    ids = {Path(uri).stem: int(i) for i, uri in rows}
    assert set(ids) == set(FILES)
    yield root / "index", ids
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def live(index: tuple[Path, dict[str, int]]) -> Iterator[dict[str, str]]:
    """A server per policy, all on the same index."""
    with (
        serve(create_app(settings_for(index[0]))) as safe,
        serve(create_app(settings_for(index[0], thumbnail_policy="all"))) as all_,
        serve(create_app(settings_for(index[0], thumbnail_policy="none"))) as none,
    ):
        yield {"safe": safe, "all": all_, "none": none}


def thumbnail(base: str, item: int) -> httpx.Response:
    answer = httpx.get(f"{base}/v1/items/{item}/thumbnail", params={"size": SIZE}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    return answer


def pixels(answer: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))


def test_readyz_shows_the_policy(live: dict[str, str]) -> None:
    for policy, base in live.items():
        assert httpx.get(f"{base}/readyz", timeout=5).json()["thumbnail_policy"] == policy


@pytest.mark.parametrize("name", sorted(MASKED))
def test_known_text_regions_are_black_and_the_rest_unchanged(
    live: dict[str, str], index: tuple[Path, dict[str, int]], name: str
) -> None:
    item = index[1][name]
    safe, plain = thumbnail(live["safe"], item), thumbnail(live["all"], item)
    assert safe.headers[MASKED_HEADER] and WITHHELD_HEADER not in safe.headers
    assert MASKED_HEADER not in plain.headers
    masked, shown = pixels(safe), pixels(plain)
    assert masked.shape == shown.shape
    # the regions at thumbnail scale: black out where a region blacks out 3x3 source
    # pixels around the thumbnail pixel's footprint (bicubic reaches 2 px at 1/4 scale)
    height, width = shown.shape[:2]
    regions = read_text_regions(FILES[name].read_bytes())
    ds = pydicom.dcmread(FILES[name], stop_before_pixels=True)
    blank = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
    for r in regions:
        blank[max(r.y0, 0) : max(r.y1, 0), max(r.x0, 0) : max(r.x1, 0)] = not r.keep
    scale = int(ds.Columns) / width
    margin = int(np.ceil(3 * scale))
    ys = (np.arange(height) * scale).astype(int)
    xs = (np.arange(width) * scale).astype(int)

    def everywhere(value: bool) -> np.ndarray:  # thumbnail pixels whose footprint is all value
        out = np.zeros((height, width), dtype=bool)
        for i, y in enumerate(ys):
            rows = blank[max(y - margin, 0) : y + margin + 1]
            for j, x in enumerate(xs):
                window = rows[:, max(x - margin, 0) : x + margin + 1]
                out[i, j] = window.all() if value else not window.any()
        return out

    hidden, kept = everywhere(True), everywhere(False)
    assert hidden.any() and kept.any()
    assert not masked[hidden].any()  # black where the text is
    if name != "us_regions":  # its middle frame is dark outside the ultrasound region
        assert shown[hidden].any()  # ... and there was something there to hide
    assert np.array_equal(masked[kept], shown[kept])  # the image itself: unchanged


@pytest.mark.parametrize("name", sorted(WITHHELD))
def test_no_known_region_gets_the_placeholder_and_the_reason(
    live: dict[str, str], index: tuple[Path, dict[str, int]], name: str
) -> None:
    item = index[1][name]
    safe, plain = thumbnail(live["safe"], item), thumbnail(live["all"], item)
    reason = safe.headers[WITHHELD_HEADER]
    assert NO_REGION in reason
    assert reason.split(";")[0] in (
        "Burned In Annotation is YES",
        "modality US: ultrasound screens carry patient and operator text",
        "modality OT: 'other' is mostly screenshots and scanned pages",
        "secondary capture (screenshots, scanned pages)",
    )
    assert pixels(safe).shape == (SIZE, SIZE, 3)  # the placeholder, not the image
    assert safe.content != plain.content and WITHHELD_HEADER not in plain.headers


def test_an_unflagged_ct_is_the_same_under_safe_and_all(
    live: dict[str, str], index: tuple[Path, dict[str, int]]
) -> None:
    item = index[1]["ct"]
    safe, plain = thumbnail(live["safe"], item), thumbnail(live["all"], item)
    assert safe.content == plain.content
    assert MASKED_HEADER not in safe.headers and WITHHELD_HEADER not in safe.headers


def test_none_withholds_everything(
    live: dict[str, str], index: tuple[Path, dict[str, int]]
) -> None:
    for item in index[1].values():
        answer = thumbnail(live["none"], item)
        assert answer.headers[WITHHELD_HEADER] == POLICY_OFF


def test_index_stats_shows_the_policy_and_the_items_at_risk(
    index: tuple[Path, dict[str, int]],
) -> None:
    def stats(*extra: str, policy: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEARCH_")}
        env["MEDSEARCH_THUMBNAIL_POLICY"] = policy
        args = [sys.executable, "-m", "indexer.cli", "index", "stats", "--index", str(index[0])]
        run = subprocess.run(
            [*args, *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    at_risk = len(MASKED | WITHHELD)
    assert f"thumbnails: policy none; {at_risk} active items at risk" in stats(policy="none")
    facts = json.loads(stats("--json", policy="safe"))["thumbnails"]
    assert facts == {"policy": "safe", "at_risk": at_risk}
