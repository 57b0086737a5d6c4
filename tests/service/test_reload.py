"""A new index version published while the service answers: it switches, nothing fails."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from indexer.pipeline.runner import BuildReport, open_catalog
from indexer.store.sync import sync_index
from service.app import create_app
from tests.service.conftest import settings_for

pytestmark = pytest.mark.slow


def test_switches_to_a_new_version_without_failing_requests(
    built_index: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(built_index[0], index_dir)
    app = create_app(settings_for(index_dir, index_poll_s=0.1))
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(app) as client:
        before = client.get("/readyz").json()

        def hammer() -> None:
            while not stop.is_set():
                r = client.post("/v1/search/text", json={"text": "ct", "k": 5})
                statuses.append(r.status_code)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        catalog = open_catalog(index_dir)
        try:
            uid = catalog.items([1])[1].sop_instance_uid
            assert uid
            catalog.remove(uids=[uid])
            binding = catalog.binding()
            assert binding is not None
            sync_index(catalog, index_dir, binding)
            sync_index(catalog, index_dir, binding, rebuild=True)
        finally:
            catalog.close()
        deadline = time.monotonic() + 10
        after = before
        while time.monotonic() < deadline and after["index_version"] == before["index_version"]:
            time.sleep(0.1)
            after = client.get("/readyz").json()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert after["index_version"] != before["index_version"]
    assert after["items"] == before["items"] - 1
    assert statuses and set(statuses) == {200}
    assert get_testdata_file("CT_small.dcm")
