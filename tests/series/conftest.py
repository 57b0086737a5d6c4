"""One index per session over generated CT/MR series (a middle slice of each held back,
not indexed) and pydicom's DICOMDIR series, built with the bundled test model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom.data
import pytest

from indexer.pipeline.runner import run_build
from tests.pipeline.conftest import options
from tests.series.corpus import Series, write_series

SEEDS = range(5)  # 20, 27, 34, 41, 48 slices; CT and MR


@dataclass
class SeriesCorpus:
    index_dir: Path
    series: list[Series]  # the indexed slices of each (the held-back one removed)
    held: dict[str, Path]  # series uid -> its held-back slice (alone in a folder)
    dicomdir: Path


def dicomdir() -> Path:
    return Path(pydicom.data.get_testdata_file("DICOMDIR"))


@pytest.fixture(scope="session")
def series_corpus(tmp_path_factory: pytest.TempPathFactory) -> SeriesCorpus:
    root = tmp_path_factory.mktemp("series")
    held_dir = root / "held"
    held_dir.mkdir()
    series, held = [], {}
    for seed in SEEDS:
        written = write_series(
            root / "src", seed, 20 + 7 * seed, modality="CT" if seed % 2 else "MR"
        )
        middle = len(written.paths) // 2
        (held_dir / written.series_uid).mkdir()
        held[written.series_uid] = shutil.move(
            written.paths[middle], held_dir / written.series_uid / "held.dcm"
        )
        series.append(
            Series(
                written.study_uid,
                written.series_uid,
                written.modality,
                written.paths[:middle] + written.paths[middle + 1 :],
                written.sop_uids[:middle] + written.sop_uids[middle + 1 :],
            )
        )
    index_dir = root / "index"
    run_build(options([str(root / "src"), str(dicomdir())], index_dir))
    return SeriesCorpus(index_dir, series, held, dicomdir())
