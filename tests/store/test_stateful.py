"""Stateful property test: random add / remove / search / reopen against a simple model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.sync import sync_index

DIM = 8
BINDING = ModelBinding("a" * 64, DIM, "reference", "viewer-v1")


def _vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class CatalogAndIndex(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="medsearch-stateful-"))
        self.catalog = Catalog.open(catalog_url(self.dir))
        self.catalog.bind_model(BINDING)
        self.expected: dict[str, np.ndarray] = {}  # uid -> vector of active items
        self.removed: set[str] = set()
        self.next_seed = 0
        self.searcher: Searcher | None = None

    def _publish(self) -> None:
        sync_index(self.catalog, self.dir, BINDING)
        if self.searcher is None:
            self.searcher = Searcher(self.dir, self.catalog)
        else:
            self.searcher.reload_if_changed()

    @rule(n=st.integers(min_value=1, max_value=12))
    def add(self, n: int) -> None:
        items = []
        for _ in range(n):
            self.next_seed += 1
            uid = f"1.2.{self.next_seed}"
            vec = _vector(self.next_seed)
            fields = {"sha256": "0" * 64, "size": 1, "format": "dicom", "width": 1, "height": 1}
            items.append(NewItem(f"dicom:{uid}:1", f"file:///{uid}", vec, fields))
            self.expected[uid] = vec
        fields_uid = {it.identity.split(":")[1]: it for it in items}
        for uid, item in fields_uid.items():
            item.fields["sop_instance_uid"] = uid
        self.catalog.add_batch(None, items, [])
        self._publish()

    @precondition(lambda self: bool(self.expected))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.expected)))
        assert self.catalog.remove(uids=[uid]) == 1
        del self.expected[uid]
        self.removed.add(uid)
        self._publish()

    @precondition(lambda self: bool(self.expected) and self.searcher is not None)
    @rule(data=st.data())
    def search_finds_itself(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.expected)))
        assert self.searcher is not None
        hits = self.searcher.search(self.expected[uid], 3)
        assert hits and hits[0].item.sop_instance_uid == uid
        assert hits[0].score > 0.999

    @precondition(lambda self: self.searcher is not None)
    @rule()
    def reopen(self) -> None:
        self.catalog.close()
        self.catalog = Catalog.open(catalog_url(self.dir))
        self.searcher = Searcher(self.dir, self.catalog)

    @invariant()
    def index_matches_model(self) -> None:
        if self.searcher is None:
            return
        assert self.catalog.count() == len(self.expected)
        assert int(self.searcher.loaded.index.ntotal) == len(self.expected)
        if self.expected:
            probe = next(iter(self.expected.values()))
            hits = self.searcher.search(probe, len(self.expected) + 5)
            uids = {h.item.sop_instance_uid for h in hits}
            assert uids == set(self.expected) and not uids & self.removed

    def teardown(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.dir, ignore_errors=True)


CatalogAndIndex.TestCase.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None, derandomize=True
)
test_catalog_and_index = CatalogAndIndex.TestCase
