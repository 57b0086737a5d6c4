"""``medsearch index watch`` against a real Orthanc, with the test model: an upload is
searchable over HTTP within ``SEARCHABLE_S``; a deleted instance leaves the results; a
PACS restart is waited out; a watcher SIGKILLed mid-batch and restarted ends where an
uninterrupted build does (same instances, same embeddings, no duplicates, verified)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from indexer.pipeline.runner import open_catalog, run_build
from indexer.store.models import ItemRow
from indexer.store.sync import index_store
from indexer.store.verify import verify
from service.app import create_app
from tests.pacs.orthanc import PASSWORD, USER, Orthanc, orthanc
from tests.pipeline.conftest import options
from tests.series.corpus import write_series
from tests.service.conftest import settings_for
from tests.service.live import serve
from tests.watch.harness import active_sops, delete_instance, wait_for, watching

pytestmark = pytest.mark.slow

SEARCHABLE_S = 20.0  # upload (or deletion) in Orthanc -> the search results show it


@pytest.fixture()
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orthanc]:
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_USERNAME", USER)
    monkeypatch.setenv("MEDSEARCH_DICOMWEB_PASSWORD", PASSWORD)
    with orthanc(tmp_path / "orthanc") as server:
        yield server


def _published(index: Path) -> int:
    manifest = index_store(index).current() if (index / "index").exists() else None
    return -1 if manifest is None else manifest.count


def _hits(http: httpx.Client, base: str, series_uid: str) -> int:
    body = {"text": "ct", "k": 50, "filters": {"series_instance_uid": [series_uid]}}
    answer = http.post(f"{base}/v1/search/text", json=body)
    assert answer.status_code == 200, answer.text
    return len(answer.json()["results"])


def test_uploads_become_searchable_deletions_leave_and_a_pacs_restart_is_waited_out(
    pacs: Orthanc, tmp_path: Path
) -> None:
    index, src = tmp_path / "index", tmp_path / "src"
    first = write_series(src, seed=1, slices=3)
    pacs.upload(first.paths)
    with watching(pacs, index, tmp_path / "watch.log") as watcher:
        wait_for(lambda: _published(index) == 3, 60, "the first series published")
        with serve(create_app(settings_for(index))) as base, httpx.Client(timeout=30) as http:
            second = write_series(src, seed=2, slices=4)
            pacs.upload(second.paths)
            wait_for(lambda: _hits(http, base, second.series_uid) == 4, SEARCHABLE_S, "upload")

            delete_instance(pacs, second.sop_uids[1])
            wait_for(lambda: _hits(http, base, second.series_uid) == 3, SEARCHABLE_S, "delete")
            assert second.sop_uids[1] not in active_sops(index)

            pacs.stop()  # a PACS restart: the watcher backs off and waits
            time.sleep(1.5)
            assert watcher.alive()
            pacs.start()
            third = write_series(src, seed=3, slices=2)
            pacs.upload(third.paths)
            wait_for(lambda: _hits(http, base, third.series_uid) == 2, 60, "after the restart")
        assert watcher.alive()
        assert watcher.stop() == 0  # SIGTERM: a clean stop
    assert "polling again in" in (tmp_path / "watch.log").read_text()
    assert sorted(active_sops(index)) == sorted(
        first.sop_uids + second.sop_uids[:1] + second.sop_uids[2:] + third.sop_uids
    )


def _embeddings(index: Path) -> dict[str, np.ndarray]:
    catalog = open_catalog(index, read_only=True)
    try:
        with catalog.session() as s:
            query = select(ItemRow.sop_instance_uid, ItemRow.embedding).where(
                ItemRow.status == "active"
            )
            return {str(uid): np.frombuffer(vec, "<f4") for uid, vec in s.execute(query)}
    finally:
        catalog.close()


def test_a_watcher_killed_mid_batch_resumes_to_the_state_of_an_uninterrupted_run(
    pacs: Orthanc, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    series = [write_series(tmp_path / "src", seed=10 + n, slices=8) for n in range(3)]
    uploaded = sorted(uid for s in series for uid in s.sop_uids)
    pacs.upload([path for s in series for path in s.paths])
    log = tmp_path / "watch.log"
    with watching(pacs, index, log, batch=4) as watcher:
        wait_for(lambda: len(active_sops(index)) >= 4, 60, "a first batch committed")
        watcher.kill()  # SIGKILL, decoder workers included, while later batches run
    killed_with = len(active_sops(index))
    assert 4 <= killed_with < len(uploaded), "the watcher was not killed mid-run"
    with watching(pacs, index, log, batch=4) as again:
        wait_for(lambda: _published(index) == len(uploaded), 90, "every instance published")
        assert again.stop() == 0

    sops = active_sops(index)
    assert sorted(sops) == uploaded  # nothing missed, nothing twice
    catalog = open_catalog(index, read_only=True)
    try:
        assert catalog.stats()["failures"] == {}
        report = verify(index, catalog, probes=10)
        assert report.ok, report.problems
    finally:
        catalog.close()

    reference = tmp_path / "reference"  # the uninterrupted run: one build of the PACS
    run_build(options([f"dicomweb+{pacs.dicomweb}"], reference, batch_size=4))
    mine, theirs = _embeddings(index), _embeddings(reference)
    assert mine.keys() == theirs.keys()
    for uid, vector in theirs.items():
        np.testing.assert_allclose(mine[uid], vector, atol=1e-5)


def test_any_dicomweb_server_is_polled_with_qido_rs(pacs: Orthanc, tmp_path: Path) -> None:
    """``--orthanc off``: QIDO-RS listings instead of the change feed, same identities."""
    from indexer.settings import EncoderSettings, ImagingSettings
    from indexer.watch.loop import Watcher, WatchOptions
    from tests.watch.harness import TEST_MODEL

    series = write_series(tmp_path / "src", seed=21, slices=5)  # 1 of 5: under 25%
    pacs.upload(series.paths)
    index = tmp_path / "index"
    options = WatchOptions(
        source=f"dicomweb+{pacs.dicomweb}", index_dir=index, model_dir=TEST_MODEL,
        orthanc="off", reconcile_s=1e-3, imaging=ImagingSettings(decode_timeout_s=60),
        encoder=EncoderSettings(provider="cpu", intra_op_threads=1),
    )  # fmt: skip
    watcher = Watcher(options)
    try:
        assert watcher.cycle() is False
        assert watcher.feed is not None and watcher.feed.kind == "qido"
        assert sorted(active_sops(index)) == sorted(series.sop_uids)
        delete_instance(pacs, series.sop_uids[0])
        time.sleep(0.01)  # the next poll lists the whole PACS (reconcile_s)
        watcher.cycle()
        assert sorted(active_sops(index)) == sorted(series.sop_uids[1:])
        assert watcher.catalog.cursor(watcher.source_uri) is not None
    finally:
        watcher.close()
    assert _published(index) == 4
