"""``index build --series-sample N``: N slices per series, evenly spaced along the slice
order (position along the normal first, then InstanceNumber); recorded, kept by reruns."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from indexer.pipeline.sampling import SAMPLING_SKIPPED, evenly_spaced, sample_series
from indexer.sources import open_source
from indexer.store.catalog import Catalog, catalog_url
from indexer.store.series import member_items
from tests.series.corpus import write_series
from tests.service.conftest import TEST_MODEL


def test_evenly_spaced_takes_both_ends() -> None:
    assert evenly_spaced(48, 5) == [0, 12, 24, 35, 47]
    assert evenly_spaced(3, 5) == [0, 1, 2]
    assert evenly_spaced(10, 1) == [0]


def test_position_along_the_normal_orders_the_slices(tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", seed=7, slices=21)
    numbers = list(range(1, 22))
    random.Random(0).shuffle(numbers)  # instance numbers that disagree with the positions
    for path, number in zip(series.paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        # sagittal plane: the normal is x; positions along it are 3 * file index
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, 1]
        ds.ImagePositionPatient = [3.0 * series.paths.index(path), 50.0, -20.0]
        ds.save_as(path)
    source = open_source(str(tmp_path / "src"))
    counts: dict[str, int] = {}
    picked = [Path(item.local_path or "") for item in sample_series(source, 3, counts=counts)]
    assert picked == [series.paths[0], series.paths[10], series.paths[20]]
    assert counts == {SAMPLING_SKIPPED: 18}


def _build(
    src: Path, index: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "indexer.cli", "index", "build", str(src), "--index", str(index),
        "--model", str(TEST_MODEL), "--no-progress", "--workers", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=check)


@pytest.mark.slow
def test_cli_builds_a_sample_and_reruns_keep_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    first = write_series(src, seed=0, slices=20)
    second = write_series(src, seed=1, slices=27, modality="MR")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(src / "photo.png")
    index = tmp_path / "index"
    report = tmp_path / "report.json"
    _build(src, index, "--series-sample", "4", "--report", str(report))
    result = json.loads(report.read_text())
    assert result["indexed"] == 4 + 4 + 1
    assert result["skipped"][SAMPLING_SKIPPED] == 16 + 23
    catalog = Catalog.open(catalog_url(index))
    try:
        for series in (first, second):
            ids, _ = member_items(catalog, series.series_uid)
            rows = catalog.items(int(i) for i in ids)
            chosen = sorted(rows[int(i)].sop_instance_uid or "" for i in ids)
            picks = [series.sop_uids[i] for i in evenly_spaced(len(series.paths), 4)]
            assert chosen == sorted(picks)
    finally:
        catalog.close()
    _build(src, index, "--report", str(report))  # a rerun keeps the sample: nothing new
    rerun = json.loads(report.read_text())
    assert rerun["indexed"] == 0 and rerun["skipped"][SAMPLING_SKIPPED] == 39
    refused = _build(src, index, "--series-sample", "5", check=False)
    assert refused.returncode != 0
    assert "--series-sample 5 would mix samples" in refused.stderr
