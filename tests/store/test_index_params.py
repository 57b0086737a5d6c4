"""The FAISS parameter choices: boundaries and the FAISS guideline invariants."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from indexer.store.index_params import (
    EXACT_BELOW,
    MAX_POINTS_PER_LIST,
    MIN_POINTS_PER_LIST,
    choose_kind,
    choose_nlist,
    needs_retrain,
    nprobe_candidates,
    pq_m,
    training_size,
    uses_hnsw_quantizer,
)

# choose_nlist's floor (4*sqrt(n)) and the 39-points cap meet here: n/39 == 4*sqrt(n)
FEASIBLE_FROM = (4 * MIN_POINTS_PER_LIST) ** 2  # 24,336
# ... and the power of two (at most 8*sqrt(n)) always fits under the cap from here on
POW2_FROM = (8 * MIN_POINTS_PER_LIST) ** 2  # 97,344


def is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def test_choose_kind_threshold() -> None:
    assert choose_kind(0) == "flat"
    assert choose_kind(EXACT_BELOW - 1) == "flat"
    assert choose_kind(EXACT_BELOW) == "ivf_sq8"  # the default: codes + exact re-ranking
    assert choose_kind(5, exact_below=5) == "ivf_sq8"
    assert choose_kind(EXACT_BELOW, compress="none") == "ivf_flat"
    assert choose_kind(4, exact_below=5, compress="pq") == "flat"  # exact wins when small
    assert choose_kind(10**6, compress="sq8") == "ivf_sq8"
    assert choose_kind(10**6, compress="pq") == "ivf_pq"


@pytest.mark.parametrize(
    "kwargs",
    [{"n": -1}, {"n": 10, "exact_below": 0}, {"n": 10, "compress": "zstd"}],
)
def test_choose_kind_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        choose_kind(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "nlist"),
    [
        (0, 1),
        (1, 1),
        (38, 1),
        (39, 1),
        (77, 1),
        (78, 2),  # 2 lists of 39
        (5_000, 128),  # capped: 5000 // 39
        (FEASIBLE_FROM - 1, 623),  # capped below 4*sqrt(n) = 623.99: infeasible
        (FEASIBLE_FROM, 624),  # capped at exactly 4*sqrt(n) = n/39 = 624
        (50_000, 1024),  # 4*sqrt = 894 -> 1024 <= 50000 // 39 = 1282
        (100_000, 2048),  # 4*sqrt = 1265 -> 2048
        (1_000_000, 4096),  # 4*sqrt = 4000 -> 4096
        (10_000_000, 16_384),  # 12,649 -> 16,384
        (100_000_000, 65_536),  # 40,000 -> 65,536
    ],
)
def test_choose_nlist_table(n: int, nlist: int) -> None:
    assert choose_nlist(n) == nlist


def test_choose_nlist_refuses_negative() -> None:
    with pytest.raises(ValueError):
        choose_nlist(-1)


@given(st.integers(min_value=0, max_value=10**10))
def test_choose_nlist_invariants(n: int) -> None:
    nlist = choose_nlist(n)
    assert nlist >= 1
    assert nlist <= 16 * math.sqrt(n) or nlist == 1
    if n >= MIN_POINTS_PER_LIST:
        assert n / nlist >= MIN_POINTS_PER_LIST  # at least 39 training points per list
    if n > 0 and n // MIN_POINTS_PER_LIST >= 4 * math.sqrt(n):
        # where 39 points per list allow it: inside the FAISS range [4, 16] * sqrt(n)
        assert 4 * math.sqrt(n) <= nlist <= 16 * math.sqrt(n)
    if n >= POW2_FROM:
        assert is_pow2(nlist)  # the cap no longer binds


@pytest.mark.parametrize("n", [FEASIBLE_FROM, FEASIBLE_FROM + 1, POW2_FROM - 1, POW2_FROM])
def test_choose_nlist_range_boundaries(n: int) -> None:
    nlist = choose_nlist(n)
    assert n / nlist >= MIN_POINTS_PER_LIST
    assert 2 * math.sqrt(n) <= nlist <= 8 * math.sqrt(n)


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_choose_nlist_is_monotonic(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert choose_nlist(lo) <= choose_nlist(hi)


def test_training_size_boundaries() -> None:
    assert training_size(0, 1) == 0
    assert training_size(1_000_000, 4096) == 409_600  # 100 per list (autofaiss)
    assert training_size(100_000, 2048) == 100_000  # all of them
    assert training_size(10**9, 10, points_per_list=1) == 10 * MIN_POINTS_PER_LIST
    assert training_size(10**9, 10, points_per_list=10_000) == 10 * MAX_POINTS_PER_LIST
    with pytest.raises(ValueError):
        training_size(10, 0)


@given(
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=1, max_value=1000),
)
def test_training_size_invariants(n: int, per_list: int) -> None:
    nlist = choose_nlist(n)
    size = training_size(n, nlist, points_per_list=per_list)
    assert size <= n
    assert size <= MAX_POINTS_PER_LIST * nlist
    if n >= MIN_POINTS_PER_LIST:
        assert size >= MIN_POINTS_PER_LIST * nlist  # FAISS's k-means warning threshold


def test_nprobe_candidates() -> None:
    assert nprobe_candidates(1) == [1]
    assert nprobe_candidates(2) == [1, 2]
    assert nprobe_candidates(16) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert nprobe_candidates(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    with pytest.raises(ValueError):
        nprobe_candidates(0)


@given(st.integers(min_value=1, max_value=1 << 20))
def test_nprobe_candidates_invariants(nlist: int) -> None:
    cands = nprobe_candidates(nlist)
    assert cands[0] == 1 and cands[-1] == nlist
    assert all(a < b for a, b in itertools.pairwise(cands))
    assert all(b <= 2 * a for a, b in itertools.pairwise(cands))  # no big jumps


def test_needs_retrain() -> None:
    assert not needs_retrain(400, 100)  # exactly 4x: not yet
    assert needs_retrain(401, 100)
    assert not needs_retrain(100, 100)
    assert needs_retrain(1, 0)
    assert not needs_retrain(0, 0)
    assert needs_retrain(201, 100, factor=2.0)
    with pytest.raises(ValueError):
        needs_retrain(10, 10, factor=1.0)


@pytest.mark.parametrize(
    ("dim", "m"), [(1024, 128), (768, 96), (64, 8), (100, 10), (97, 1), (4, 1), (1, 1)]
)
def test_pq_m_table(dim: int, m: int) -> None:
    assert pq_m(dim) == m


@given(st.integers(min_value=1, max_value=8192))
def test_pq_m_divides_dim(dim: int) -> None:
    m = pq_m(dim)
    assert dim % m == 0
    assert dim // m >= min(8, dim)  # at least 8 dimensions per sub-quantizer


def test_hnsw_quantizer_only_for_many_lists() -> None:
    assert not uses_hnsw_quantizer(choose_nlist(10**6))  # 4096 lists: a flat scan is cheap
    assert uses_hnsw_quantizer(choose_nlist(10**7))  # 16384 lists
    assert uses_hnsw_quantizer(64, hnsw_from=64) and not uses_hnsw_quantizer(63, hnsw_from=64)
