"""The local engine's stages with real decoder processes, the test model and a catalog:
items travel between threads in small lists, yet a source that is slow to list (a PACS,
a watched folder) gets what it has read embedded and committed without waiting for a
full list; and a list of fetched bytes over ``CHUNK_BYTES`` is split."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.encoders.encoder import Encoder
from indexer.imaging.guard import DecodeJob
from indexer.imaging.types import DecodeResult
from indexer.pipeline import local
from indexer.pipeline.channels import Channel
from indexer.pipeline.embedder import Embedder
from indexer.pipeline.items import ReadItem, fetch
from indexer.pipeline.local import run_local
from indexer.pipeline.preparer import Prepared, Preparer
from indexer.pipeline.runner import binding_for
from indexer.pipeline.writer import Writer
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources import open_source
from indexer.store.catalog import Catalog, catalog_url
from tests.pipeline.conftest import TEST_MODEL, corpus_dir

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm", "rtplan.dcm"]


def _items() -> list[ReadItem]:
    by_name = {it.relpath: it for it in open_source(str(corpus_dir()))}
    return [ReadItem(by_name[name], None) for name in FILES]


def _run(
    tmp_path: Path, items: Iterator[ReadItem], on_commit: local.OnCommit, *, as_bytes: bool
) -> local.StageStats:
    encoder = Encoder.load(TEST_MODEL, EncoderSettings(provider="cpu", intra_op_threads=1))
    binding = binding_for(encoder, None)
    catalog = Catalog.open(catalog_url(tmp_path))
    catalog.bind_model(binding)
    preparers = [Preparer(ImagingSettings(), encoder.recipe()) for _ in range(2)]

    def fetcher(read: ReadItem) -> DecodeJob | DecodeResult:
        job = fetch(read, 1 << 30)
        if as_bytes and isinstance(job, DecodeJob) and job.path is not None:
            return DecodeJob(data=Path(job.path).read_bytes())  # as an archive member
        return job

    try:
        writer = Writer(catalog, catalog.start_run("build", []))
        embedder = Embedder(encoder, binding.recipe)
        return run_local(
            items, fetcher, preparers, embedder, writer, io_threads=2, on_commit=on_commit
        )
    finally:
        for preparer in preparers:
            preparer.close()
        catalog.close()


def test_a_slow_source_gets_its_items_committed_before_it_ends(tmp_path: Path) -> None:
    """The source lists three items, then waits for them to be committed before it lists
    the rest: the reader must hand on a partial list (CHUNK_ITEMS is 8), the embedder run
    a partial batch, the writer commit it. If anything held them back, the source would
    give up after 60 s and the test fail."""
    items = _items()
    first_commit = threading.Event()
    batches: list[list[str]] = []

    def slow() -> Iterator[ReadItem]:
        yield from items[:3]
        if not first_commit.wait(60):
            raise AssertionError("the first items were held back waiting for more")
        yield from items[3:]

    def on_commit(batch: list[Prepared], counts: tuple[int, int, int]) -> None:
        batches.append([p.read.item.relpath for p in batch])
        first_commit.set()

    stats = _run(tmp_path, slow(), on_commit, as_bytes=False)
    assert sorted(name for batch in batches for name in batch) == sorted(FILES)
    assert set(batches[0]) <= set(FILES[:3])  # the first commit: what was read by then
    assert len(stats.commits) == len(batches) >= 2


def test_fetched_bytes_over_the_chunk_limit_go_on_in_smaller_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "CHUNK_BYTES", 1)  # every fetched item is a list of its own
    monkeypatch.setattr(local, "CHUNK_WAIT_S", 60.0)  # the reader hands on full lists only
    sizes: dict[str, list[int]] = {}

    class Recorded(Channel[Any]):
        def put(self, item: Any) -> None:
            if isinstance(item, list):
                sizes.setdefault(self.name, []).append(len(item))
            super().put(item)

    monkeypatch.setattr(local, "Channel", Recorded)
    committed: list[str] = []

    def on_commit(batch: list[Prepared], counts: tuple[int, int, int]) -> None:
        committed.extend(p.read.item.relpath for p in batch)

    _run(tmp_path, iter(_items()), on_commit, as_bytes=True)
    assert sorted(committed) == sorted(FILES)
    assert sizes["reads"] == [len(FILES)]  # one list from the reader (under CHUNK_ITEMS)
    assert sizes["jobs"] == [1] * len(FILES)  # split by bytes
