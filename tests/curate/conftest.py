"""One index per session of a generated CT series (one slice held back) and one planted
odd image (colour noise), with a sidecar column on every item, built with the test model.
Tests that change the index work on a copy (:func:`index_copy`)."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.pipeline.runner import run_build
from tests.pipeline.conftest import options
from tests.series.corpus import write_series

SLICES = 25


@dataclass(frozen=True)
class CurateCorpus:
    index_dir: Path
    planted: Path  # indexed: colour noise among CT slices
    odd: Path  # not indexed: other colour noise
    held: Path  # not indexed: the series' middle slice
    slices: list[Path]  # indexed


def noise_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def curate_corpus(tmp_path_factory: pytest.TempPathFactory) -> CurateCorpus:
    root = tmp_path_factory.mktemp("curate")
    src, aside = root / "src", root / "aside"
    aside.mkdir()
    series = write_series(src, seed=3, slices=SLICES, modality="CT")
    middle = SLICES // 2
    held = Path(shutil.move(series.paths[middle], aside / "held.dcm"))
    slices = series.paths[:middle] + series.paths[middle + 1 :]
    planted = noise_png(src / "planted.png", seed=7)
    odd = noise_png(aside / "odd.png", seed=8)
    sidecar = root / "labels.csv"
    with sidecar.open("w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["path", "site"])
        for path in [*slices, planted]:
            writer.writerow([path.relative_to(src).as_posix(), "north"])
    run_build(options([str(src)], root / "index", sidecar=sidecar))
    return CurateCorpus(root / "index", planted, odd, held, slices)


@pytest.fixture()
def index_copy(curate_corpus: CurateCorpus, tmp_path: Path) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(curate_corpus.index_dir, dst)
    return dst
