"""FAISS parameter choices: small, pure functions of the collection size (autofaiss style).

The numbers follow the FAISS wiki, "Guidelines to choose an index":

- below a few tens of thousands of vectors an exact (flat) index is fast enough and has
  perfect recall, and an IVF cannot be trained well on so few points;
- ``IVFx`` with ``x`` between ``4*sqrt(N)`` and ``16*sqrt(N)`` lists;
- k-means needs between ``30*x`` and ``256*x`` training points: FAISS warns below
  ``39`` points per centroid (``min_points_per_centroid``) and subsamples above ``256``
  (``max_points_per_centroid``);
- ``nprobe`` is not derived from a rule but measured: the smallest value that reaches the
  target recall on the collection itself (see :mod:`indexer.store.vector_index`);
- compressed codes: ``SQ8`` (1 byte per dimension, the default) and ``PQm`` (``m`` bytes
  per vector with 8-bit codes), both re-ranked exactly with the float32 vectors (the
  searcher keeps them in memory, :mod:`indexer.store.rerank_store`). SQ8 is the default
  because it was the fastest index at recall@10 >= 0.95 in ``benchmarks/bench_search.py``
  (it reads a quarter of the bytes that ``IVFFlat`` reads per probed list; the exact
  re-rank of 2k candidates costs microseconds);
- an HNSW coarse quantizer once there are many lists (:data:`HNSW_QUANTIZER_FROM`): a flat
  quantizer compares the query with every centroid, which at 16k+ lists of 1024-d costs
  more than scanning the probed lists.
"""

from __future__ import annotations

import math
from typing import Literal

IndexKind = Literal["flat", "ivf_flat", "ivf_sq8", "ivf_pq"]
Compression = Literal["none", "sq8", "pq"]

#: The compression of a new index once it outgrows exact search (``--compress`` changes it).
DEFAULT_COMPRESSION: Compression = "sq8"
#: From this many IVF lists on, the coarse quantizer is an HNSW graph over the centroids
#: (trained with exact k-means first); below it, a flat scan of the centroids is as fast.
HNSW_QUANTIZER_FROM = 8192
#: HNSW quantizer: neighbours per node, and the search breadth per probed list.
HNSW_M = 32
HNSW_EF_PER_PROBE = 2

#: Below this many vectors the index is exact (``IndexFlatIP``).
EXACT_BELOW = 20_000
#: FAISS warns when k-means gets fewer training points per centroid than this.
MIN_POINTS_PER_LIST = 39
#: FAISS k-means subsamples to this many points per centroid: more are wasted.
MAX_POINTS_PER_LIST = 256
#: Training points per list by default (autofaiss uses 100): k-means over 1M x 1024-d
#: vectors with 256 per list takes ~10 min on 2 cores, with 100 per list ~4 min.
DEFAULT_POINTS_PER_LIST = 100
#: Retrain when the collection has grown past this multiple of the training set.
RETRAIN_FACTOR = 4.0
#: Dimensions per PQ sub-quantizer (8-bit codes): 1 bit per dimension.
PQ_DIMS_PER_SUBQUANTIZER = 8

_KIND_OF_COMPRESSION: dict[Compression, IndexKind] = {
    "none": "ivf_flat",
    "sq8": "ivf_sq8",
    "pq": "ivf_pq",
}


def choose_kind(
    n: int, *, exact_below: int = EXACT_BELOW, compress: Compression = DEFAULT_COMPRESSION
) -> IndexKind:
    """The index type for ``n`` vectors.

    Exact search below ``exact_below`` (FAISS's answer when exact results are affordable:
    a flat scan of 20k x 1024-d vectors takes a few ms, needs no training, and an IVF
    could not be trained well on so few points). At and above it, an IVF: ``ivf_flat``
    keeps the float32 vectors, ``ivf_sq8`` / ``ivf_pq`` compress them (4x / 32x) and
    need exact re-ranking.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if exact_below < 1:
        raise ValueError(f"exact_below must be >= 1, got {exact_below}")
    if compress not in _KIND_OF_COMPRESSION:
        raise ValueError(f"compress must be one of {sorted(_KIND_OF_COMPRESSION)}")
    if n < exact_below:
        return "flat"
    return _KIND_OF_COMPRESSION[compress]


def choose_nlist(n: int) -> int:
    """The number of IVF lists for ``n`` vectors.

    The smallest power of two ``>= 4*sqrt(n)``, so within the FAISS range
    ``[4*sqrt(n), 16*sqrt(n)]`` (at most ``8*sqrt(n)``): few lists keep training and the
    coarse search cheap. Then capped at ``n // 39`` so that every list gets at least
    ``MIN_POINTS_PER_LIST`` (39) training points; the cap binds below ~97k vectors (where
    the power of two may exceed ``n/39``), gives ``4*sqrt(n) <= nlist`` down to 24,336
    vectors (``4*sqrt(n) == n/39``) and fewer lists below that. At least 1.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return 1
    pow2 = 1 << math.ceil(math.log2(4 * math.sqrt(n)))
    return max(1, min(pow2, n // MIN_POINTS_PER_LIST))


def training_size(n: int, nlist: int, *, points_per_list: int = DEFAULT_POINTS_PER_LIST) -> int:
    """How many of the ``n`` vectors to train the IVF's k-means on.

    ``points_per_list * nlist`` (clamped to FAISS's ``[39, 256]`` points per centroid:
    fewer gives poor centroids and a FAISS warning, more is subsampled away by FAISS
    anyway), never more than ``n``. Training costs ``O(points * nlist * dim)`` per k-means
    iteration, so this is the knob that keeps a 1M-vector build in minutes.
    """
    if n < 0 or nlist < 1:
        raise ValueError(f"need n >= 0 and nlist >= 1, got n={n}, nlist={nlist}")
    per_list = min(max(points_per_list, MIN_POINTS_PER_LIST), MAX_POINTS_PER_LIST)
    return min(n, per_list * nlist)


def nprobe_candidates(nlist: int) -> list[int]:
    """The ``nprobe`` values tried when tuning, ascending: 1, 2, 3, 4, 6, 8, 12, 16, ...

    Powers of two and 1.5x powers of two (a finer grid than powers of two alone, so the
    chosen value overshoots the needed one by at most 1.5x in search cost), capped by and
    always ending with ``nlist`` (an exhaustive IVF scan).
    """
    if nlist < 1:
        raise ValueError(f"nlist must be >= 1, got {nlist}")
    out: set[int] = {nlist}
    p = 1
    while p < nlist:
        out.add(p)
        if p >= 2 and p * 3 // 2 < nlist:
            out.add(p * 3 // 2)
        p *= 2
    return sorted(out)


def needs_retrain(n_now: int, n_trained: int, factor: float = RETRAIN_FACTOR) -> bool:
    """Whether an IVF trained on ``n_trained`` points must be retrained for ``n_now`` vectors.

    ``n_trained`` is :attr:`BuildFacts.trained_on` (the k-means training set, at most the
    collection size at build time). Once the collection is more than ``factor`` times
    larger, the lists are several times longer than planned (slower searches) and
    ``choose_nlist`` asks for more of them, so the next build trains from scratch.
    """
    if factor <= 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    if n_trained <= 0:
        return n_now > 0
    return n_now > factor * n_trained


def pq_m(dim: int) -> int:
    """The number of PQ sub-quantizers for ``dim``-d vectors (8-bit codes).

    ``dim / 8`` when 8 divides ``dim`` (1024 -> 128 bytes per vector, 32x smaller than
    float32; FAISS: ``PQm`` needs ``m`` to divide ``d``, and 4-8 dimensions per
    sub-quantizer keep the quantisation error small enough to re-rank from). Otherwise the
    sub-vector length is the smallest divisor of ``dim`` that is at least 8, so ``m``
    always divides ``dim``; a ``dim`` below 8 gets one sub-quantizer.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    for sub in range(min(PQ_DIMS_PER_SUBQUANTIZER, dim), dim + 1):
        if dim % sub == 0:
            return dim // sub
    return 1  # pragma: no cover - the loop ends at sub == dim


def uses_hnsw_quantizer(nlist: int, *, hnsw_from: int = HNSW_QUANTIZER_FROM) -> bool:
    """Whether an IVF with ``nlist`` lists gets an HNSW coarse quantizer."""
    return nlist >= hnsw_from
