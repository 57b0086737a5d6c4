"""Build the pydicom corpus with the test model; search, filters, add, remove, verify."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from indexer.encoders.encoder import Encoder
from indexer.errors import ModelMismatchError
from indexer.imaging import decode_path
from indexer.pipeline.runner import BuildReport, open_catalog, run_build
from indexer.settings import ImagingSettings
from indexer.store.catalog import ModelBinding
from indexer.store.filters import Filters
from indexer.store.searcher import Searcher
from indexer.store.verify import verify
from tests.pipeline.conftest import corpus_dir, options

pytestmark = pytest.mark.slow


def test_build_indexes_the_corpus(built_index: tuple[Path, BuildReport]) -> None:
    index_dir, report = built_index
    result = report.to_dict()
    # pydicom ships the same instances in several transfer syntaxes: same SOP Instance
    # UID, indexed once, the other copies recorded as duplicates
    assert result["indexed"] >= 60 and result["duplicates"] >= 10
    assert result["failed"].get("no image", 0) >= 5  # RT plans, SRs, ... skipped with a reason
    assert set(result["stage_seconds"]) == {"read", "fetch", "prepare", "embed", "write"}
    assert result["index"]["count"] == result["indexed"]
    saved = json.loads((index_dir / "reports" / f"run-{report.run_id:06d}.json").read_text())
    assert saved["indexed"] == result["indexed"]
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM failures").fetchone()[0] >= 5
    catalog = open_catalog(index_dir)
    try:
        assert verify(index_dir, catalog).ok
    finally:
        catalog.close()


def test_an_indexed_image_finds_itself_first(
    built_index: tuple[Path, BuildReport], encoder: Encoder
) -> None:
    index_dir, _ = built_index
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    pixels = decode_path(path, ImagingSettings()).images[0].pixels
    catalog = open_catalog(index_dir)
    try:
        searcher = Searcher(index_dir, catalog)
        vector = encoder.embed_images([pixels], searcher.binding.recipe)[0]
        hits = searcher.search(vector, 5)
        assert hits[0].item.source_uri.endswith("/MR_small.dcm")
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        only_ct = searcher.search(vector, 5, filters=Filters(modality=["CT"]))
        assert only_ct and all(h.item.modality == "CT" for h in only_ct)
        assert not searcher.search(vector, 5, filters=Filters(modality=["XX"]))
    finally:
        catalog.close()


def test_rerun_skips_everything(index_copy: Path) -> None:
    report = run_build(options([str(corpus_dir())], index_copy)).to_dict()
    assert report["indexed"] == 0 and report["duplicates"] == 0
    assert sum(report["skipped"].values()) > 150


def test_add_and_remove(index_copy: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    for name in ("CT_small.dcm",):
        src = get_testdata_file(name)
        assert src is not None
        shutil.copy(src, extra / "copy_of_ct.dcm")
    report = run_build(options([str(extra)], index_copy, command="add")).to_dict()
    # same SOP Instance UID as an indexed file: recognised, not indexed twice
    assert report["indexed"] == 0 and report["duplicates"] == 1
    catalog = open_catalog(index_copy)
    try:
        before = catalog.count()
        uid = catalog.items([1])[1].sop_instance_uid
        assert uid is not None
        assert catalog.remove(uids=[uid]) >= 1
        binding = catalog.binding()
        assert binding is not None
        from indexer.store.sync import sync_index

        manifest = sync_index(catalog, index_copy, binding)
        assert manifest["count"] == catalog.count() < before
        searcher = Searcher(index_copy, catalog)
        vector = catalog.embeddings([1])[1]
        assert all(h.id != 1 for h in searcher.search(vector, 10))
        assert verify(index_copy, catalog).ok
    finally:
        catalog.close()


def test_a_different_model_is_refused(index_copy: Path) -> None:
    catalog = open_catalog(index_copy)
    try:
        with pytest.raises(ModelMismatchError):
            catalog.bind_model(ModelBinding("0" * 64, 32, "reference", "viewer-v1"))
    finally:
        catalog.close()
    report_dir = index_copy / "other"
    report_dir.mkdir()
    # the same catalog with another recipe is another model binding: refused
    with pytest.raises(ModelMismatchError):
        run_build(options([str(report_dir)], index_copy, recipe="azure"))


def test_sidecar_labels_become_filterable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        src = get_testdata_file(name)
        assert src is not None
        shutil.copy(src, data / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,finding\nCT_small.dcm,nodule\nMR_small.dcm,normal\n")
    index_dir = tmp_path / "index"
    run_build(options([str(data)], index_dir, sidecar=csv, sidecar_key="path"))
    catalog = open_catalog(index_dir)
    try:
        ids = catalog.filter_ids(Filters(labels={"finding": "nodule"}))
        assert len(ids) == 1
        assert catalog.items(ids.tolist())[int(ids[0])].modality == "CT"
        embeddings = np.stack(list(catalog.embeddings(ids.tolist()).values()))
        assert embeddings.shape == (1, 32)
    finally:
        catalog.close()
