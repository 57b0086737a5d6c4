"""Leave-one-out retrieval: precision@k, recall@k and mean average precision by label.

Every labelled item is a query with its own stored embedding. Its candidates are the other
labelled items, less those that share its study or patient when asked (``exclude``);
relevant candidates are those with the query's label. Candidates are ranked by exact inner
product (cosine: the embeddings are L2-normalised), computed as a numpy matrix product in
blocks of queries: evaluation measures the embeddings, so it reads them from the catalog
and never the published FAISS index (which may be approximate or compressed), and average
precision needs every candidate's rank, not a top-k.

- precision@k = relevant in the top k / k; recall@k = relevant in the top k / R, where R
  is the number of relevant candidates.
- average precision = (1/R) * sum, over the positions i of the relevant candidates in the
  full ranking, of precision@i. With ``ap_depth`` D only the top D positions are ranked:
  the sum stops at D and is divided by min(R, D) (cheaper at 10^5 items and more; k must
  not exceed D).
- A query with no relevant candidate (the only item of its label, or all of them excluded)
  has no recall or average precision: it is counted in ``skipped_queries`` and left out of
  every mean (a label all of whose queries are skipped is listed in ``skipped_labels``
  instead of ``per_label``). Overall numbers are means over the remaining queries;
  ``per_label`` the same means over the queries of each label.
- Ties: candidates whose float32 scores agree to within one unit in the last place (below
  the rounding of the dot product itself) are ranked non-relevant first (pessimistic).

Cost: one (n x dim) by (dim x n) product and one sort of n keys per query: at 10^5 x 1024
about 2 x 10^13 flops (see benchmarks/RESULTS.md). ``queries`` evaluates a seeded random
sample of the queries against all candidates, for a proportional saving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from indexer.errors import MedsearchError

Exclude = Literal["none", "same-study", "same-patient"]
Progress = Callable[[int, int], None]  # (queries done, queries in all)

_BLOCK_ELEMENTS = 1 << 24  # scores per block of queries (64 MiB of float32)
_SIGN = np.uint32(0x80000000)


class RetrievalMetrics(BaseModel):
    """Means over the (non-skipped) queries of a set: all of them or one label's."""

    queries: int
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    mean_average_precision: float
    precision_curve: list[float] = Field(description="precision@k for k = 1 .. max(k)")


class RetrievalScores(RetrievalMetrics):
    """Overall means, the same per label, and what was counted."""

    items: int = Field(description="labelled items: the candidates")
    skipped_queries: int = Field(description="queries without a relevant candidate")
    k: list[int]
    ap_depth: int | None = Field(description="positions ranked for AP; null: all")
    per_label: dict[str, RetrievalMetrics]
    skipped_labels: list[str] = Field(description="labels none of whose queries was scored")


class RetrievalReport(RetrievalScores):
    """What ``medsearch eval`` reports."""

    label: str
    label_source: str
    exclude: Exclude
    unlabelled: int = Field(description="active items without the label (not evaluated)")
    seconds: float


def evaluate_retrieval(
    vectors: npt.NDArray[np.float32],
    labels: Sequence[str],
    *,
    groups: npt.NDArray[np.int64] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    ap_depth: int | None = None,
    queries: int | None = None,
    seed: int = 0,
    block: int | None = None,
    progress: Progress | None = None,
) -> RetrievalScores:
    """Leave-one-out scores of ``vectors`` (n, dim) labelled ``labels`` (see the module).

    ``groups``: an integer per item (``-1``: none); a query's candidates exclude the items
    of its group (its study or patient). ``queries``: evaluate a random sample of this many
    queries (seeded by ``seed``); all items stay candidates.
    """
    n = len(labels)
    if vectors.shape[0] != n:
        raise ValueError("one label per vector")
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise MedsearchError("k must be positive integers")
    if ap_depth is not None and ap_depth < ks[-1]:
        raise MedsearchError(f"the AP depth ({ap_depth}) must be at least the largest k")
    names, codes = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    codes = codes.astype(np.int64)
    rows = np.arange(n)
    if queries is not None and queries < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=queries, replace=False))
    depth = n if ap_depth is None else min(ap_depth, n)
    block = block or max(1, min(4096, _BLOCK_ELEMENTS // n))
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    kmax = ks[-1]
    average_precision = np.zeros(len(rows))
    hits = np.zeros((len(rows), kmax), dtype=np.int32)  # relevant in the top 1 .. kmax
    relevant = np.zeros(len(rows), dtype=np.int64)
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        at = slice(start, start + len(part))
        average_precision[at], hits[at], relevant[at] = _score_block(
            data, codes, groups, part, depth, kmax
        )
        if progress is not None:
            progress(at.stop, len(rows))
    query_codes = codes[rows]
    valid = relevant > 0
    if not valid.any():
        raise MedsearchError("no query has a relevant candidate (another item with its label)")
    overall = _means(average_precision, hits, relevant, valid, ks)
    per_label = {
        str(name): _means(average_precision, hits, relevant, valid & (query_codes == c), ks)
        for c, name in enumerate(names)
        if (valid & (query_codes == c)).any()
    }
    return RetrievalScores(
        **overall.model_dump(),
        items=n,
        skipped_queries=int((~valid).sum()),
        k=ks,
        ap_depth=ap_depth,
        per_label=per_label,
        skipped_labels=[str(name) for name in names if str(name) not in per_label],
    )


def _score_block(
    data: npt.NDArray[np.float32],
    codes: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64] | None,
    part: npt.NDArray[np.int64],
    depth: int,
    kmax: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """(average precision, relevant in the top 1..kmax, relevant candidates) per query."""
    n = len(codes)
    scores = data[part] @ data.T  # (b, n)
    excluded = part[:, None] == np.arange(n)[None, :]
    if groups is not None:
        mine = groups[part][:, None]
        excluded |= (mine == groups[None, :]) & (mine >= 0)
    relevant = (codes[part][:, None] == codes[None, :]) & ~excluded
    scores[excluded] = -np.inf  # ranked last, never relevant: no effect on any metric
    keys = _rank_keys(scores, relevant)
    if depth < n:
        keys = np.partition(keys, n - depth, axis=1)[:, n - depth :]
    keys.sort(axis=1)
    ranked = (keys[:, ::-1] & 1) == 0  # best first: is the candidate at each position relevant
    found = np.cumsum(ranked, axis=1, dtype=np.int64)
    total = relevant.sum(axis=1)
    at_row, at_col = np.nonzero(ranked)
    precision = found[at_row, at_col] / (at_col + 1.0)
    ap_sum = np.bincount(at_row, weights=precision, minlength=len(part))
    average_precision = ap_sum / np.maximum(np.minimum(total, depth), 1)
    curve = found[:, :kmax]
    if curve.shape[1] < kmax:  # fewer candidates than k: the count stays at its last value
        pad = np.repeat(curve[:, -1:], kmax - curve.shape[1], axis=1)
        curve = np.concatenate([curve, pad], axis=1)
    return average_precision, curve.astype(np.int32), total


def _rank_keys(
    scores: npt.NDArray[np.float32], relevant: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint32]:
    """uint32 keys that sort like the scores, with the lowest bit 0 for a relevant item.

    Sorting them ranks candidates by score and, within one unit in the last place, a
    relevant one below a non-relevant one: reversed, ties are pessimistic.
    """
    bits = scores.view(np.uint32)
    keys = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    keys &= np.uint32(0xFFFFFFFE)
    keys |= (~relevant).astype(np.uint32)
    return keys


def _means(
    average_precision: npt.NDArray[np.float64],
    hits: npt.NDArray[np.int32],
    relevant: npt.NDArray[np.int64],
    mask: npt.NDArray[np.bool_],
    ks: Sequence[int],
) -> RetrievalMetrics:
    count = int(mask.sum())
    found = hits[mask].astype(np.float64)
    curve = found.mean(axis=0) / np.arange(1, found.shape[1] + 1)
    recall = found / relevant[mask][:, None]
    return RetrievalMetrics(
        queries=count,
        precision_at_k={k: float(curve[k - 1]) for k in ks},
        recall_at_k={k: float(recall[:, k - 1].mean()) for k in ks},
        mean_average_precision=float(average_precision[mask].mean()),
        precision_curve=[float(p) for p in curve],
    )
