"""A real index of pydicom's test files, built once per session with the test model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom.data
import pytest

from indexer.pipeline.runner import BuildOptions, BuildReport
from indexer.settings import EncoderSettings, ImagingSettings

TEST_MODEL = Path(__file__).parents[1] / "data" / "test_model"


def corpus_dir() -> Path:
    return Path(pydicom.data.__file__).parent / "test_files"


def options(sources: list[str], index_dir: Path, **kw: object) -> BuildOptions:
    base: dict[str, object] = {
        "sources": sources,
        "index_dir": index_dir,
        "model_dir": TEST_MODEL,
        "workers": 2,
        "batch_size": 16,
        "progress": False,
        "imaging": ImagingSettings(decode_timeout_s=60),
        "encoder": EncoderSettings(provider="cpu", intra_op_threads=1),
    }
    base.update(kw)
    return BuildOptions(**base)  # type: ignore[arg-type]


@pytest.fixture()
def index_copy(built_index: tuple[Path, BuildReport], tmp_path: Path) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(built_index[0], dst)
    return dst
