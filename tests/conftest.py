"""Shared fixtures: the bundled test model, its encoder, real images from pydicom."""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.errors import MedsearchError
from indexer.pipeline.runner import BuildReport, run_build
from indexer.settings import EncoderSettings

TEST_MODEL = Path(__file__).parent / "data" / "test_model"
SECOND_SEED = 20241231  # the second test model: the bundled one's architecture, another seed


def copy_testdata(folder: Path, names: Iterable[str]) -> Path:
    """``folder``, made here, with copies of pydicom's test files ``names``."""
    folder.mkdir(parents=True)
    for name in names:
        path = get_testdata_file(name)
        assert path is not None, name
        shutil.copy(path, folder / name)
    return folder


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_torch = pytest.mark.skipif(not has_module("torch"), reason="needs the export extra (torch)")
needs_reference = pytest.mark.skipif(
    not (has_module("torch") and has_module("MedImageInsights") and has_module("transformers")),
    reason="needs the reference implementation (dev extra)",
)


@pytest.fixture(scope="session")
def test_model_dir() -> Path:
    return TEST_MODEL


@pytest.fixture(scope="session")
def encoder(test_model_dir: Path) -> Encoder:
    return Encoder.load(test_model_dir, EncoderSettings(provider="cpu", intra_op_threads=2))


def dicom_images() -> dict[str, Image.Image]:
    """Real scanner images from pydicom's test files, rendered to 8-bit by min-max."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    out: dict[str, Image.Image] = {}
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm"):
        path = get_testdata_file(name)
        assert path is not None, name
        arr = dcmread(path).pixel_array
        if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] != 3):
            arr = arr[0]
        arr = arr.astype(np.float64)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0) * 255.0
        out[name] = Image.fromarray(np.round(arr).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def real_images() -> dict[str, Image.Image]:
    return dicom_images()


@pytest.fixture()
def tmp_model_copy(tmp_path: Path, test_model_dir: Path) -> Iterator[Path]:
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(test_model_dir, dst)
    yield dst


@pytest.fixture(scope="session")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildReport]:
    """A real index of pydicom's test files, built once per session with the test model."""
    from tests.pipeline.conftest import corpus_dir, options

    index_dir = tmp_path_factory.mktemp("index")
    report = run_build(options([str(corpus_dir())], index_dir))
    return index_dir, report


def _loads(model_dir: Path) -> bool:
    try:
        Encoder.load(model_dir, EncoderSettings(provider="cpu"))  # hashes and self-test
    except (MedsearchError, OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="session")
def second_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled test model's architecture with another seed: made once (about 20 s of
    torch export) and kept in pytest's cache between runs."""
    pytest.importorskip("torch", reason="needs the export extra to make a second model")
    from indexer.model.synthetic import build_test_model

    cache = request.config.cache
    root = cache.mkdir("medsearch-second-model") if cache else tmp_path_factory.mktemp("m")
    model = root / f"seed-{SECOND_SEED}"
    if not _loads(model):
        shutil.rmtree(model, ignore_errors=True)
        started = time.perf_counter()
        tokenizer = TEST_MODEL / "tokenizer"
        build_test_model(
            model, tokenizer / "vocab.json", tokenizer / "merges.txt", seed=SECOND_SEED, fp16=False
        )
        print(f"\nsecond test model made in {time.perf_counter() - started:.1f} s")
    return model
