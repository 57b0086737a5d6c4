"""Equal scores at the cut: the first k of any larger k are the same hits (so pages of a
query never overlap or skip), whatever FAISS returns first among equals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.store.catalog import Catalog, ModelBinding, NewItem, catalog_url
from indexer.store.searcher import Searcher
from indexer.store.sync import sync_index

DIM = 8


def test_prefixes_are_stable_among_identical_vectors(tmp_path: Path) -> None:
    catalog = Catalog.open(catalog_url(tmp_path))
    binding = ModelBinding("f" * 64, DIM, "default", "test")
    catalog.bind_model(binding)
    rng = np.random.default_rng(0)
    twin = rng.standard_normal(DIM).astype(np.float32)
    twin /= np.linalg.norm(twin)
    vectors = [twin] * 25 + [v / np.linalg.norm(v) for v in rng.standard_normal((40, DIM))]
    order = rng.permutation(len(vectors))  # the twins spread over the ids
    items = [
        NewItem(f"sha256:{n}", f"file:///x/{n}.png", vectors[j].astype(np.float32), {})
        for n, j in enumerate(order)
    ]
    fields = {"format": "png", "width": 1, "height": 1, "sha256": "0" * 64, "size": 1}
    for item in items:
        item.fields.update(fields)
    catalog.add_batch(catalog.start_run("build", []), items, [])
    sync_index(catalog, tmp_path, binding)
    searcher = Searcher(tmp_path, catalog)
    query = twin + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    previous: list[int] = []
    for k in range(1, 40):
        ids = [hit.id for hit in searcher.search(query, k)]
        assert ids[: len(previous)] == previous, k
        previous = ids
    ties = [hit for hit in searcher.search(query, 25)]
    assert len({round(h.score, 5) for h in ties}) == 1  # the twins, in id order
    assert [h.id for h in ties] == sorted(h.id for h in ties)
    catalog.close()
