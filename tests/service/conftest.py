"""The service over a real index of pydicom's test files, with the bundled test model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from service.config import ServiceSettings

TEST_MODEL = Path(__file__).parents[1] / "data" / "test_model"
KEY = "k" * 12 + "-test-key-0001"


def settings_for(index_dir: Path, **kw: object) -> ServiceSettings:
    base: dict[str, object] = {
        "index_dir": index_dir,
        "model_dir": TEST_MODEL,
        "provider": "cpu",
        "intra_op_threads": 1,
        "workers": 2,
        "index_poll_s": 0.2,
    }
    base.update(kw)
    return ServiceSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(built_index: tuple[Path, BuildReport]) -> Iterator[TestClient]:
    app = create_app(settings_for(built_index[0]))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def keyed_client(built_index: tuple[Path, BuildReport]) -> Iterator[TestClient]:
    app = create_app(settings_for(built_index[0], api_keys=[KEY]))
    with TestClient(app) as c:
        yield c
