"""Series vectors in the catalog and the series index published with the instance index:
pooling, incremental updates on add and remove, catching up after a crash, both files of
a version or neither."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import IndexCorruptError
from indexer.pipeline.runner import run_build
from indexer.store.catalog import Catalog, ModelBinding, catalog_url
from indexer.store.index_files import SERIES_FILE
from indexer.store.searcher import Searcher
from indexer.store.series import (
    member_items,
    pool,
    refresh_series,
    series_by_uid,
    series_revision,
)
from indexer.store.series_search import SeriesQuery, SeriesSearcher
from indexer.store.sync import index_store, sync_index
from indexer.store.verify import verify
from tests.pipeline.conftest import options
from tests.series.conftest import SeriesCorpus


def _open(index_dir: Path) -> Catalog:
    return Catalog.open(catalog_url(index_dir))


@pytest.fixture()
def corpus_copy(series_corpus: SeriesCorpus, tmp_path: Path) -> Iterator[tuple[Path, Catalog]]:
    index_dir = tmp_path / "index"
    shutil.copytree(series_corpus.index_dir, index_dir)
    catalog = _open(index_dir)
    try:
        yield index_dir, catalog
    finally:
        catalog.close()


def _binding(catalog: Catalog) -> ModelBinding:
    binding = catalog.binding()
    assert binding is not None
    return binding


def _first(index_dir: Path, catalog: Catalog, vector: np.ndarray) -> tuple[str, float]:
    hits = SeriesSearcher(Searcher(index_dir, catalog)).search(SeriesQuery(vector), 1)
    return hits[0].series.series_instance_uid, hits[0].score


def test_series_vectors_pool_their_instances(series_corpus: SeriesCorpus) -> None:
    catalog = _open(series_corpus.index_dir)
    try:
        for series in series_corpus.series:
            uid = series.series_uid
            _, vector = series_by_uid(catalog, [uid])[uid]
            ids, members = member_items(catalog, uid)
            assert len(ids) == len(series.paths)
            np.testing.assert_allclose(vector, pool(members), atol=1e-6)
            assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    finally:
        catalog.close()


def test_a_single_instance_series_is_its_instance(series_corpus: SeriesCorpus) -> None:
    catalog = _open(series_corpus.index_dir)
    try:
        singles = 0
        for uid, (_, vector) in series_by_uid(catalog, _dicomdir_series(catalog)).items():
            ids, members = member_items(catalog, uid)
            if len(ids) == 1:
                singles += 1
                np.testing.assert_allclose(
                    vector, members[0] / np.linalg.norm(members[0]), atol=1e-6
                )
        assert singles >= 1
    finally:
        catalog.close()


def _dicomdir_series(catalog: Catalog) -> list[str]:
    from sqlalchemy import select

    from indexer.store.models import ItemRow

    with catalog.session() as s:
        rows = s.scalars(
            select(ItemRow.series_instance_uid)
            .where(
                ItemRow.source_uri.contains("DICOMDIR"), ItemRow.series_instance_uid.is_not(None)
            )
            .distinct()
        )
        return [str(r) for r in rows]


def test_the_published_version_holds_both_indexes(series_corpus: SeriesCorpus) -> None:
    loaded = index_store(series_corpus.index_dir).load()
    assert loaded.manifest.series is not None
    assert SERIES_FILE in loaded.manifest.files
    catalog = _open(series_corpus.index_dir)
    try:
        expected = len(series_corpus.series) + len(_dicomdir_series(catalog))
        assert loaded.manifest.series.count == int(loaded.series.ntotal) == expected
        assert loaded.manifest.series.pooling == "mean"
        report = verify(series_corpus.index_dir, catalog)
        assert report.ok, report.problems
        assert report.facts["series_count"] == expected
    finally:
        catalog.close()


def test_remove_and_add_update_series_vectors(
    series_corpus: SeriesCorpus, corpus_copy: tuple[Path, Catalog]
) -> None:
    index_dir, catalog = corpus_copy
    series = series_corpus.series[0]
    uid = series.series_uid
    assert catalog.remove(uids=[series.sop_uids[0]]) == 1
    sync_index(catalog, index_dir, _binding(catalog))
    ids, members = member_items(catalog, uid)
    assert len(ids) == len(series.paths) - 1
    _, vector = series_by_uid(catalog, [uid])[uid]
    np.testing.assert_allclose(vector, pool(members), atol=1e-6)
    assert _first(index_dir, catalog, vector) == (uid, pytest.approx(1.0, abs=1e-5))

    # the held-back slice joins its series: one more member, the vector pooled again
    run_build(options([str(series_corpus.held[uid].parent)], index_dir))
    ids, members = member_items(catalog, uid)
    assert len(ids) == len(series.paths)
    _, vector = series_by_uid(catalog, [uid])[uid]
    np.testing.assert_allclose(vector, pool(members), atol=1e-6)
    assert _first(index_dir, catalog, vector) == (uid, pytest.approx(1.0, abs=1e-5))

    # a series with every instance removed leaves the series index
    other = series_corpus.series[1]
    _, old_vector = series_by_uid(catalog, [other.series_uid])[other.series_uid]
    before = index_store(index_dir).current()
    assert before is not None and before.series is not None
    catalog.remove(uids=[other.series_uid])
    sync_index(catalog, index_dir, _binding(catalog))
    after = index_store(index_dir).current()
    assert after is not None and after.series is not None
    assert after.series.count == before.series.count - 1
    assert other.series_uid not in series_by_uid(catalog, [other.series_uid])
    assert _first(index_dir, catalog, old_vector)[0] != other.series_uid
    assert verify(index_dir, catalog).ok


def test_a_crash_between_refresh_and_publish_is_caught_up(
    series_corpus: SeriesCorpus, corpus_copy: tuple[Path, Catalog]
) -> None:
    index_dir, catalog = corpus_copy
    series = series_corpus.series[2]
    catalog.remove(uids=series.sop_uids[:5])
    refresh_series(catalog, _binding(catalog).embedding_dim)  # the table moved on; no publish
    problems = verify(index_dir, catalog).problems  # the removed items are (not the series)
    assert not [p for p in problems if "series" in p], problems
    sync_index(catalog, index_dir, _binding(catalog))  # the next sync takes it
    manifest = index_store(index_dir).current()
    assert manifest is not None and manifest.series is not None
    assert manifest.series.revision == series_revision(catalog)
    _, vector = series_by_uid(catalog, [series.series_uid])[series.series_uid]
    assert _first(index_dir, catalog, vector) == (series.series_uid, pytest.approx(1.0, abs=1e-5))
    assert verify(index_dir, catalog).ok


def test_a_version_without_its_series_file_is_refused(corpus_copy: tuple[Path, Catalog]) -> None:
    index_dir, _ = corpus_copy
    store = index_store(index_dir)
    manifest = store.current()
    assert manifest is not None
    (store.versions_dir / manifest.version / SERIES_FILE).unlink()
    with pytest.raises(IndexCorruptError, match="series.faiss is missing"):
        store.load()


def test_an_index_from_before_series_vectors_gains_them(corpus_copy: tuple[Path, Catalog]) -> None:
    index_dir, catalog = corpus_copy
    store = index_store(index_dir)
    loaded = store.load()
    old = loaded.manifest.model_dump(exclude={"version", "created_at", "facts", "files", "series"})
    from indexer.store.vector_index import BuiltIndex

    store.publish(BuiltIndex(loaded.index, loaded.manifest.facts), old)  # no series index
    assert store.load().series is None
    with pytest.raises(Exception, match="no series index"):
        SeriesSearcher(Searcher(index_dir, catalog)).search(SeriesQuery(np.ones(1, np.float32)), 1)
    assert not verify(index_dir, catalog).ok
    sync_index(catalog, index_dir, _binding(catalog))
    assert store.load().series is not None
    assert verify(index_dir, catalog).ok


def test_frames_of_a_multi_frame_object_pool_into_its_series(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from indexer.settings import ImagingSettings

    source = tmp_path / "src"
    source.mkdir()
    path = get_testdata_file("emri_small.dcm")  # 10 frames
    assert path is not None
    shutil.copy(path, source / "emri_small.dcm")
    index_dir = tmp_path / "index"
    imaging = ImagingSettings(decode_timeout_s=60, frames="all")
    run_build(options([str(source)], index_dir, imaging=imaging))
    catalog = _open(index_dir)
    try:
        import pydicom

        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        ids, members = member_items(catalog, uid)
        assert len(ids) == 10
        _, vector = series_by_uid(catalog, [uid])[uid]
        np.testing.assert_allclose(vector, pool(members), atol=1e-6)
        assert verify(index_dir, catalog).ok
    finally:
        catalog.close()
