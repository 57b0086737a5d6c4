"""The catalog on a real SQLite file: binding, batches, identity, removal, filters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import ModelMismatchError
from indexer.store.catalog import Catalog, ModelBinding, NewFailure, NewItem, catalog_url
from indexer.store.filters import Filters

BINDING = ModelBinding("f" * 64, 4, "reference", "viewer-v1")


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=4).astype(np.float32)
    return v / np.linalg.norm(v)


def _item(n: int, **fields: object) -> NewItem:
    base: dict[str, object] = {
        "sha256": f"{n:064x}",
        "size": 10,
        "format": "dicom",
        "width": 2,
        "height": 2,
        "modality": "CT",
        "sop_instance_uid": f"1.2.{n}",
        "study_instance_uid": "1.9",
    }
    base.update(fields)
    return NewItem(f"dicom:1.2.{n}:1", f"file:///data/{n}.dcm", _vec(n), base)


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog.open(catalog_url(tmp_path))
    cat.bind_model(BINDING)
    yield cat  # type: ignore[misc]
    cat.close()


def test_binding_is_fixed(catalog: Catalog) -> None:
    catalog.bind_model(BINDING)  # same: fine
    with pytest.raises(ModelMismatchError, match="Use the same model"):
        catalog.bind_model(ModelBinding("0" * 64, 4, "reference", "viewer-v1"))
    with pytest.raises(ModelMismatchError):
        catalog.bind_model(ModelBinding("f" * 64, 4, "azure", "viewer-v1"))


def test_batch_with_failures_and_duplicate_identity(catalog: Catalog) -> None:
    run = catalog.start_run("build", ["/data"])
    ids = catalog.add_batch(run, [_item(1), _item(2)], [NewFailure("file:///x", "corrupt")])
    assert ids == [1, 2]
    assert catalog.add_batch(run, [_item(1), _item(3)], []) == [3]  # 1 exists: skipped
    assert catalog.seen_sources(["file:///data/1.dcm", "file:///x", "file:///new"]) == {
        "file:///data/1.dcm",
        "file:///x",
    }
    got = catalog.embeddings([2])[2]
    np.testing.assert_array_equal(got, _vec(2))
    catalog.finish_run(run, {"indexed": 3})
    assert catalog.stats()["failures"] == {"corrupt": 1, "duplicate": 1}


def test_wrong_dimension_is_refused_and_nothing_is_written(catalog: Catalog) -> None:
    bad = _item(5)
    bad.embedding = np.ones(3, np.float32)
    with pytest.raises(ModelMismatchError):
        catalog.add_batch(None, [_item(4), bad], [])
    assert catalog.count() == 0  # the whole batch rolled back


def test_remove_by_uid_and_prefix(catalog: Catalog) -> None:
    catalog.add_batch(None, [_item(i) for i in range(1, 6)], [])
    assert catalog.remove(uids=["1.2.1"]) == 1
    assert catalog.remove(source_prefix="file:///data/2") == 1
    assert catalog.remove(source_prefix="file:///data/2") == 0
    assert catalog.count() == 3 and sorted(catalog.removed_ids().tolist()) == [1, 2]
    ids = np.concatenate([chunk for chunk, _ in catalog.vectors()])
    assert ids.tolist() == [3, 4, 5]
    assert catalog.remove(uids=["1.9"]) == 3  # a study UID removes the study


def test_filters(catalog: Catalog) -> None:
    catalog.add_batch(
        None,
        [
            _item(1, modality="CR", study_date=dt.date(2020, 1, 1), labels={"finding": "a"}),
            _item(2, modality="CT", study_date=dt.date(2021, 6, 1), labels={"finding": "b"}),
            _item(3, modality="MR", patient_key="p" * 32, study_instance_uid="1.8"),
        ],
        [],
    )
    assert catalog.filter_ids(Filters(modality=["CR", "MR"])).tolist() == [1, 3]
    assert catalog.filter_ids(Filters(study_date_from=dt.date(2021, 1, 1))).tolist() == [2]
    assert catalog.filter_ids(Filters(labels={"finding": "b"})).tolist() == [2]
    assert catalog.filter_ids(Filters(exclude_patient_key=["p" * 32])).tolist() == [1, 2]
    assert catalog.filter_ids(Filters(exclude_study_instance_uid=["1.9"])).tolist() == [3]
    assert catalog.filter_ids(Filters(source_prefix="file:///data/1")).tolist() == [1]
    assert catalog.filter_ids(Filters(source_prefix="file:///data/%")).tolist() == []
    assert Filters().is_empty() and not Filters(modality=["CT"]).is_empty()
