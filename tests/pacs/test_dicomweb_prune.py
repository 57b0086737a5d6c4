"""``--prune`` with a PACS (a real Orthanc): an instance deleted from a study the query
returns leaves the index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.pipeline.runner import run_build
from indexer.store.catalog import Catalog, catalog_url
from tests.pacs.orthanc import PASSWORD, USER, Orthanc, orthanc
from tests.pipeline.conftest import options
from tests.series.corpus import write_series

pytestmark = pytest.mark.slow


@pytest.fixture()
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orthanc]:
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_USERNAME", USER)
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_PASSWORD", PASSWORD)
    with orthanc(tmp_path / "orthanc") as server:
        yield server


def _sops(index: Path) -> set[str]:
    catalog = Catalog.open(catalog_url(index))
    try:
        from sqlalchemy import select

        from indexer.store.models import ItemRow

        with catalog.session() as s:
            query = select(ItemRow.sop_instance_uid).where(ItemRow.status == "active")
            return {str(uid) for uid in s.scalars(query)}
    finally:
        catalog.close()


def test_an_instance_deleted_from_the_pacs_leaves_the_index(pacs: Orthanc, tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", seed=3, slices=8)
    assert len(pacs.upload(series.paths)) == 8
    source = f"dicomweb+{pacs.dicomweb}"
    index = tmp_path / "index"
    run_build(options([source], index))
    assert _sops(index) == set(series.sop_uids)
    with pacs.client() as http:
        found = http.post("/tools/lookup", content=series.sop_uids[3]).json()
        assert http.delete(f"/instances/{found[0]['ID']}").status_code == 200
    report = run_build(options([source], index, prune=True))
    assert report.pruned == 1
    assert _sops(index) == set(series.sop_uids) - {series.sop_uids[3]}
