"""Search by series and by study: the series index, re-ranking, the best slices.

- **Series**: the query vector (a text, one image, or several slices pooled as series are
  pooled, see :func:`indexer.store.series.pool`) is searched in the published series
  index; ``score`` is the cosine of the query vector and the series vector.
- **Re-ranking** (``rerank``): the top ``RERANK_FACTOR * k`` candidates are scored again,
  exactly, by slice-level late interaction: for each query slice, its best match among the
  candidate's slices; ``score`` is the mean of those over the query slices.
- **Study** (``level="study"``): a study's vector pools its series' vectors the same way.
  Candidate studies are those of the best ``STUDY_CANDIDATES_PER_RESULT * k`` series (at
  least ``MIN_STUDY_CANDIDATES``); each is then scored exactly with its study vector.
- **Best items**: the instances of a result series closest to the query vector, exactly
  (from the catalog's embeddings), with their scores.

Filters select the series (and studies) that have at least one item matching them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from indexer.errors import MedsearchError
from indexer.store.filters import Filters
from indexer.store.records import ItemRecord
from indexer.store.searcher import Searcher
from indexer.store.series import (
    SeriesRecord,
    member_items,
    pool,
    series_embeddings,
    series_ids_of_items,
    series_of_study,
    series_records,
)
from indexer.store.vector_index import search

Level = Literal["series", "study"]
RERANK_FACTOR = 4
STUDY_CANDIDATES_PER_RESULT = 10
MIN_STUDY_CANDIDATES = 50
BEST_ITEMS = 3
Vector = npt.NDArray[np.float32]

SCORING = {
    "series": "cosine of the query vector and the series vector (mean of the series' "
    "L2-normalised instance embeddings, renormalised)",
    "study": "cosine of the query vector and the study vector (mean of its series vectors, "
    "renormalised)",
    "rerank": "late interaction: mean over the query slices of the best cosine among the "
    "series' slices",
}


class NoSeriesIndex(MedsearchError):
    """The published version has no series index (published before series vectors)."""


@dataclass
class BestItem:
    score: float
    item: ItemRecord


@dataclass
class SeriesHit:
    score: float
    series: SeriesRecord
    best_items: list[BestItem] = field(default_factory=list)


@dataclass
class StudyHit:
    study_instance_uid: str
    score: float
    series: list[SeriesHit]


@dataclass
class SeriesQuery:
    """The query vector, and the query's slices when it has several (for re-ranking)."""

    vector: Vector
    slices: npt.NDArray[np.float32] | None = None

    @classmethod
    def of_slices(cls, slices: Sequence[Vector]) -> SeriesQuery:
        matrix = np.stack([np.asarray(v, dtype=np.float32) for v in slices])
        return cls(pool(matrix), matrix)


class SeriesSearcher:
    """Series and study search over a :class:`Searcher`'s published version."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self.catalog = searcher.catalog

    def _series_index(self) -> Any:
        index = self.searcher.loaded.series
        if index is None:
            raise NoSeriesIndex(
                "this index version has no series index: run `medsearch index rebuild`"
            )
        return index

    def _allowed(self, filters: Filters | None) -> npt.NDArray[np.int64] | None:
        if filters is None or filters.is_empty():
            return None
        return series_ids_of_items(self.catalog, self.catalog.filter_ids(filters))

    def _candidates(
        self, vector: Vector, fetch: int, allowed: npt.NDArray[np.int64] | None
    ) -> list[tuple[float, int]]:
        if allowed is not None and allowed.size == 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = search(self._series_index(), query, fetch, allowed_ids=allowed)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        return sorted(pairs, key=lambda p: (-p[0], p[1]))

    def _best_items(self, series: SeriesRecord, vector: Vector, best: int) -> list[BestItem]:
        ids, vectors = member_items(self.catalog, series.series_instance_uid)
        if not len(ids):
            return []
        scores = vectors @ np.asarray(vector, dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), int(ids[i])))[:best]
        rows = self.catalog.items(int(ids[i]) for i in order)
        return [BestItem(float(scores[i]), rows[int(ids[i])]) for i in order if int(ids[i]) in rows]

    def _late_interaction(self, slices: npt.NDArray[np.float32], series_uid: str) -> float:
        _, members = member_items(self.catalog, series_uid)
        if not len(members):
            return -1.0
        return float((slices @ members.T).max(axis=1).mean())

    def search(
        self,
        query: SeriesQuery,
        k: int,
        *,
        filters: Filters | None = None,
        min_score: float | None = None,
        rerank: bool = False,
        best: int = BEST_ITEMS,
    ) -> list[SeriesHit]:
        """The ``k`` series nearest to ``query``, best first (score, then id)."""
        fetch = k * RERANK_FACTOR if rerank else k
        pairs = self._candidates(query.vector, fetch, self._allowed(filters))
        records = series_records(self.catalog, [i for _, i in pairs])
        pairs = [(s, i) for s, i in pairs if i in records]
        if rerank:
            slices = query.slices if query.slices is not None else query.vector.reshape(1, -1)
            pairs = [
                (self._late_interaction(slices, records[i].series_instance_uid), i)
                for _, i in pairs
            ]
            pairs.sort(key=lambda p: (-p[0], p[1]))
        if min_score is not None:
            pairs = [(s, i) for s, i in pairs if s >= min_score]
        return [
            SeriesHit(s, records[i], self._best_items(records[i], query.vector, best))
            for s, i in pairs[:k]
        ]

    def search_studies(
        self,
        query: SeriesQuery,
        k: int,
        *,
        filters: Filters | None = None,
        min_score: float | None = None,
        best: int = BEST_ITEMS,
    ) -> list[StudyHit]:
        """The ``k`` studies nearest to ``query`` by their study vectors."""
        fetch = max(k * STUDY_CANDIDATES_PER_RESULT, MIN_STUDY_CANDIDATES)
        allowed = self._allowed(filters)
        pairs = self._candidates(query.vector, fetch, allowed)
        candidates = series_records(self.catalog, [i for _, i in pairs])
        studies = sorted(
            {r.study_instance_uid for r in candidates.values() if r.study_instance_uid}
        )
        members = series_of_study(self.catalog, studies)
        if allowed is not None:
            keep = set(int(i) for i in allowed)
            members = {s: [i for i in ids if i in keep] for s, ids in members.items()}
        all_ids = sorted({i for ids in members.values() for i in ids})
        vectors = series_embeddings(self.catalog, all_ids)
        records = series_records(self.catalog, all_ids)
        scored = []
        for study, ids in members.items():
            ids = [i for i in ids if i in vectors and i in records]
            if not ids:
                continue
            study_vector = pool(np.stack([vectors[i] for i in ids]))
            scored.append((float(study_vector @ query.vector), study, ids))
        scored.sort(key=lambda t: (-t[0], t[1]))
        if min_score is not None:
            scored = [t for t in scored if t[0] >= min_score]
        hits = []
        for score, study, ids in scored[:k]:
            series = sorted(
                (SeriesHit(float(vectors[i] @ query.vector), records[i]) for i in ids),
                key=lambda h: (-h.score, h.series.id),
            )
            series[0].best_items = self._best_items(series[0].series, query.vector, best)
            hits.append(StudyHit(study, score, series))
        return hits
