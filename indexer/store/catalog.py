"""The catalog: the source of truth for what is indexed (see :mod:`indexer.store.models`).

Items and their embeddings are committed together, one transaction per batch, with the
failures of that batch, so a crash loses at most the batch in flight and never leaves an
item without its embedding. The FAISS index is derived from the active rows.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Table, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.errors import CatalogError, ModelMismatchError
from indexer.settings import CatalogSettings
from indexer.store import db
from indexer.store.filters import Filters, filter_query
from indexer.store.models import CatalogInfo, Failure, ItemRow, Run, SyncCursor, utcnow
from indexer.store.records import ItemRecord
from indexer.store.retries import RetryPolicy

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite3"


@dataclass(frozen=True)
class ModelBinding:
    """What a catalog's embeddings are: model, dimension, recipe, rendering policy."""

    model_fingerprint: str
    embedding_dim: int
    recipe: str
    render_policy: str


@dataclass
class NewItem:
    identity: str
    source_uri: str
    embedding: npt.NDArray[np.float32]
    fields: dict[str, Any] = field(default_factory=dict)  # ImageMetadata + file facts + labels


@dataclass
class NewFailure:
    source_uri: str
    reason: str
    detail: str = ""
    sha256: str = ""


def catalog_url(index_dir: Path, settings: CatalogSettings | None = None) -> str:
    """The catalog of ``index_dir``: ``MEDSEARCH_CATALOG_URL`` if set, else its SQLite file."""
    configured = (settings or CatalogSettings()).catalog_url
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    return db.sqlite_url(index_dir / CATALOG_FILE)


class Catalog:
    """Open with :meth:`open`; bind a model once with :meth:`bind_model`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._on_close: list[Callable[[], None]] = []

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Catalog:
        engine = db.make_engine(url)
        if upgrade:
            db.upgrade(engine)
        elif db.current_revision(engine) != db.head_revision():
            raise CatalogError("catalog schema is not current: run `medsearch db upgrade`")
        return cls(engine)

    def hold_until_closed(self, release: Callable[[], None]) -> None:
        """Call ``release`` when this catalog is closed (the index's writer lock)."""
        self._on_close.append(release)

    def close(self) -> None:
        self.engine.dispose()
        while self._on_close:
            self._on_close.pop()()

    def session(self) -> Session:
        return self._session()

    # -- the model this catalog holds embeddings of
    def binding(self) -> ModelBinding | None:
        with self.session() as s:
            info = s.scalars(select(CatalogInfo).limit(1)).first()
            if info is None:
                return None
            return ModelBinding(
                info.model_fingerprint, info.embedding_dim, info.recipe, info.render_policy
            )

    def required_binding(self) -> ModelBinding:
        """:meth:`binding`, refusing a catalog that has none (nothing built yet)."""
        binding = self.binding()
        if binding is None:
            raise CatalogError("this index is empty: no model is bound (build it first)")
        return binding

    def catalog_id(self) -> str | None:
        """This catalog's random id (set when a model is first bound)."""
        with self.session() as s:
            return s.scalar(select(CatalogInfo.catalog_id).limit(1))

    def check_index(
        self, index_catalog_id: str | None, index_dir: Path, variable: str = "MEDSEARCH_CATALOG_URL"
    ) -> None:
        """Refuse an index built from another catalog: a wrong ``MEDSEARCH_CATALOG_URL``
        (or ``variable``) or a swapped catalog file would otherwise serve or update the
        wrong rows."""
        if index_catalog_id is None:  # published before catalog ids existed
            return
        mine = self.catalog_id()
        if mine != index_catalog_id:
            this = "an empty catalog" if mine is None else f"catalog {mine[:12]}"
            raise CatalogError(
                f"the index in {index_dir} was built from catalog {index_catalog_id[:12]}, "
                f"not from {this}: check {variable} or the catalog file"
            )

    def series_sample(self, requested: int | None) -> int | None:
        """The slices per series this catalog's builds index (``None``: every slice).

        Recorded by the first build that asks for a sample on an empty catalog; later
        builds keep it. Asking for another sample, or for one on a catalog that holds every
        slice, is refused: the index would mix sampled and complete series."""
        with self.session() as s, s.begin():
            info = s.scalars(select(CatalogInfo).limit(1)).first()
            if info is None:
                raise CatalogError("no model bound to this catalog")
            recorded = info.series_sample
            if requested is None or requested == recorded:
                return recorded
            has_items = s.scalar(select(ItemRow.id).limit(1)) is not None
            if recorded is None and not has_items:
                info.series_sample = requested
                return requested
            held = "every slice" if recorded is None else f"{recorded} slices per series"
            raise CatalogError(
                f"this index holds {held}; --series-sample {requested} would mix samples: "
                "build a new index in another directory"
            )

    def check_patient_salt(self, check: str, *, record: bool) -> None:
        """Refuse a patient-hash salt other than the one this catalog's patient keys were
        made with (``check``: :meth:`~indexer.settings.ImagingSettings.salt_check`, ``""``
        for none). With ``record`` (a build), the first one is recorded; a catalog from
        before revision 0007 records the salt of its next build."""
        with self.session() as s, s.begin():
            info = s.scalars(select(CatalogInfo).limit(1)).first()
            if info is None:  # nothing built yet
                return
            held = info.patient_salt
            if held is None:
                if record:
                    info.patient_salt = check
                return
            if held == check:
                return
            if not held:
                why = (
                    "was built without MEDSEARCH_PATIENT_HASH_SALT (its items have no patient key)"
                )
            elif not check:
                why = "has patient keys made with MEDSEARCH_PATIENT_HASH_SALT, which is not set now"
            else:
                why = "has patient keys made with another MEDSEARCH_PATIENT_HASH_SALT"
            raise CatalogError(
                f"this index {why}: use the salt it was built with (mixed keys give one "
                "patient two, and exclude_same_patient misses them), or build a new index"
            )

    def bind_model(self, binding: ModelBinding) -> None:
        """Record the model on first use; refuse a different one afterwards."""
        current = self.binding()
        if current is None:
            with self.session() as s, s.begin():
                s.add(CatalogInfo(**binding.__dict__))
            return
        if current != binding:
            raise ModelMismatchError(
                "this index holds embeddings of model "
                f"{current.model_fingerprint[:16]} (recipe {current.recipe}, rendering "
                f"{current.render_policy}, dim {current.embedding_dim}); the given model is "
                f"{binding.model_fingerprint[:16]} (recipe {binding.recipe}, rendering "
                f"{binding.render_policy}, dim {binding.embedding_dim}). Use the same model, "
                "or build a new index in another directory."
            )

    # -- runs
    def start_run(self, command: str, sources: Sequence[str]) -> int:
        with self.session() as s, s.begin():
            run = Run(
                command=command,
                sources=list(sources),
                user=_user(),
                host=socket.gethostname()[:128],
            )
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, counts: dict[str, Any], status: str = "done") -> None:
        with self.session() as s, s.begin():
            s.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(finished_at=utcnow(), counts=counts, status=status)
            )

    # -- writing
    def seen_sources(self, uris: Sequence[str], policy: RetryPolicy | None = None) -> set[str]:
        """Which of ``uris`` a run skips: indexed ones, and failed ones that ``policy``
        does not retry (see :mod:`indexer.store.retries`)."""
        return set(self.why_seen(uris, policy))

    def why_seen(self, uris: Sequence[str], policy: RetryPolicy | None = None) -> dict[str, str]:
        """:meth:`seen_sources` with the reason of each: ``"active"`` or ``"removed"`` (an
        item; removed ones, by ``index remove`` or ``--prune``, are not indexed again) or
        ``"failed"``."""
        policy = policy or RetryPolicy()
        seen: dict[str, str] = {}
        with self.session() as s:
            for start in range(0, len(uris), 500):
                chunk = list(uris[start : start + 500])
                failed = s.execute(
                    select(Failure.source_uri, Failure.reason, Failure.attempts).where(
                        Failure.source_uri.in_(chunk)
                    )
                )
                seen.update(
                    (uri, "failed") for uri, reason, n in failed if not policy.retries(reason, n)
                )
                items = select(ItemRow.source_uri, ItemRow.status).where(
                    ItemRow.source_uri.in_(chunk)
                )
                seen.update({uri: status for uri, status in s.execute(items)})
        return seen

    def add_batch(
        self, run_id: int | None, items: Sequence[NewItem], failures: Sequence[NewFailure]
    ) -> list[int]:
        """Insert a batch in one transaction; items whose identity exists are skipped."""
        binding = self.binding()
        if binding is None:
            raise CatalogError("no model bound to this catalog")
        with self.session() as s, s.begin():
            identities = [item.identity for item in items]
            existing = set(
                s.scalars(
                    select(ItemRow.identity).where(
                        ItemRow.identity.in_(identities),
                        ItemRow.model_fingerprint == binding.model_fingerprint,
                        ItemRow.recipe == binding.recipe,
                    )
                )
            )
            rows: list[dict[str, Any]] = []
            duplicates = []
            for item in items:
                if item.identity in existing:
                    # recorded, so that a rerun does not decode the file again
                    duplicates.append(NewFailure(item.source_uri, "duplicate", item.identity))
                    continue
                existing.add(item.identity)
                vector = np.ascontiguousarray(item.embedding, dtype="<f4")
                if vector.shape != (binding.embedding_dim,):
                    raise ModelMismatchError(f"embedding of dimension {vector.shape}")
                rows.append(
                    {
                        **item.fields,
                        "identity": item.identity,
                        "source_uri": item.source_uri,
                        "embedding": vector.tobytes(),
                        "model_fingerprint": binding.model_fingerprint,
                        "recipe": binding.recipe,
                        "render_policy": binding.render_policy,
                        "run_id": run_id,
                    }
                )
            ids: list[int] = []
            if rows:
                # the driver's executemany, then the new ids in one SELECT (an ordered
                # INSERT ... RETURNING ran one statement per row on SQLite)
                for same_keys in _by_keys(rows):  # an executemany takes one set of columns
                    s.execute(insert(ITEMS), same_keys)
                new = [str(r["identity"]) for r in rows]
                found = dict(
                    s.execute(
                        select(ItemRow.identity, ItemRow.id).where(
                            ItemRow.identity.in_(new),
                            ItemRow.model_fingerprint == binding.model_fingerprint,
                            ItemRow.recipe == binding.recipe,
                        )
                    ).all()
                )
                ids = [int(found[identity]) for identity in new]
            indexed = {str(r["source_uri"]) for r in rows}
            _record_failures(s, run_id, [*failures, *duplicates], indexed)
            s.flush()
            return ids

    def remove(self, *, uids: Sequence[str] = (), source_prefix: str | None = None) -> int:
        """Tombstone items by SOP/Series/Study Instance UID or source URI prefix."""
        if not uids and not source_prefix:
            raise CatalogError("give UIDs or a source prefix to remove")
        query = update(ItemRow).where(ItemRow.status == "active")
        if uids:
            wanted = list(uids)
            query = query.where(
                ItemRow.sop_instance_uid.in_(wanted)
                | ItemRow.series_instance_uid.in_(wanted)
                | ItemRow.study_instance_uid.in_(wanted)
            )
        if source_prefix:
            query = query.where(ItemRow.source_uri.startswith(source_prefix, autoescape=True))
        with self.session() as s, s.begin():
            result = s.execute(query.values(status="removed", updated_at=utcnow()))
            return int(getattr(result, "rowcount", 0) or 0)

    def remove_sources(self, uris: Sequence[str]) -> int:
        """Tombstone the active items of these source URIs (their files are gone)."""
        removed = 0
        with self.session() as s, s.begin():
            for start in range(0, len(uris), 500):
                chunk = list(uris[start : start + 500])
                result = s.execute(
                    update(ItemRow)
                    .where(ItemRow.status == "active", ItemRow.source_uri.in_(chunk))
                    .values(status="removed", updated_at=utcnow())
                )
                removed += int(getattr(result, "rowcount", 0) or 0)
        return removed

    def set_cursor(self, source: str, cursor: str) -> None:
        """Record how far ``index watch`` has followed ``source`` (after its items)."""
        with self.session() as s, s.begin():
            row = s.get(SyncCursor, source)
            if row is None:
                s.add(SyncCursor(source=source, cursor=cursor))
            else:
                row.cursor = cursor

    def cursor(self, source: str) -> str | None:
        with self.session() as s:
            row = s.get(SyncCursor, source)
            return row.cursor if row is not None else None

    # -- reading
    def active_sources(self, prefix: str) -> list[str]:
        """The source URIs of active items that start with ``prefix``."""
        query = (
            select(ItemRow.source_uri)
            .where(
                ItemRow.status == "active",
                ItemRow.source_uri.startswith(prefix, autoescape=True),
            )
            .distinct()
        )
        with self.session() as s:
            return [str(uri) for uri in s.scalars(query)]

    def high_water(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(ItemRow.id))) or 0)

    def count(self, status: str = "active") -> int:
        with self.session() as s:
            return int(
                s.scalar(select(func.count(ItemRow.id)).where(ItemRow.status == status)) or 0
            )

    def vectors(
        self, *, after_id: int = 0, upto_id: int | None = None, batch: int = 20_000
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Active (id, embedding) pairs in id order, in chunks."""
        last = after_id
        while True:
            query = select(ItemRow.id, ItemRow.embedding).where(
                ItemRow.status == "active", ItemRow.id > last
            )
            if upto_id is not None:
                query = query.where(ItemRow.id <= upto_id)
            with self.session() as s:
                rows = s.execute(query.order_by(ItemRow.id).limit(batch)).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)
            yield ids, vecs
            last = int(ids[-1])

    def removed_ids(self, *, since: dt.datetime | None = None) -> npt.NDArray[np.int64]:
        query = select(ItemRow.id).where(ItemRow.status == "removed")
        if since is not None:
            query = query.where(ItemRow.updated_at >= since)
        with self.session() as s:
            return np.fromiter(s.scalars(query), dtype=np.int64)

    def embeddings(self, ids: Iterable[int]) -> dict[int, npt.NDArray[np.float32]]:
        wanted = list(ids)
        with self.session() as s:
            rows = s.execute(
                select(ItemRow.id, ItemRow.embedding).where(ItemRow.id.in_(wanted))
            ).all()
        return {int(r[0]): np.frombuffer(r[1], dtype="<f4").astype(np.float32) for r in rows}

    def embedding_matrix(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """The embeddings of ``ids`` as rows, in that order (read ``IN_CHUNK`` ids at a
        time); an id without a row is an error."""
        found: dict[int, npt.NDArray[np.float32]] = {}
        for start in range(0, len(ids), IN_CHUNK):
            found.update(self.embeddings(int(i) for i in ids[start : start + IN_CHUNK]))
        absent = [int(i) for i in ids if int(i) not in found]
        if absent:
            raise CatalogError(f"no embedding in the catalog for ids {absent[:5]}")
        return np.stack([found[int(i)] for i in ids])

    def items(self, ids: Iterable[int]) -> dict[int, ItemRecord]:
        wanted = list(ids)
        with self.session() as s:
            rows = s.scalars(select(ItemRow).where(ItemRow.id.in_(wanted))).all()
            return {row.id: ItemRecord.from_row(row) for row in rows}

    def filter_ids(self, filters: Filters) -> npt.NDArray[np.int64]:
        with self.session() as s:
            return np.fromiter(s.scalars(filter_query(filters)), dtype=np.int64)

    def ids_by_uid(self, uid: str) -> list[int]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(ItemRow.id).where(
                        ItemRow.status == "active",
                        (ItemRow.sop_instance_uid == uid)
                        | (ItemRow.series_instance_uid == uid)
                        | (ItemRow.study_instance_uid == uid),
                    )
                )
            )

    def stats(self) -> dict[str, Any]:
        with self.session() as s:
            by_status = dict(
                s.execute(select(ItemRow.status, func.count()).group_by(ItemRow.status)).all()
            )
            by_modality = dict(
                s.execute(
                    select(ItemRow.modality, func.count())
                    .where(ItemRow.status == "active")
                    .group_by(ItemRow.modality)
                ).all()
            )
            by_attempts = s.execute(
                select(Failure.reason, Failure.attempts, func.count()).group_by(
                    Failure.reason, Failure.attempts
                )
            ).all()
            runs = int(s.scalar(select(func.count(Run.id))) or 0)
        failures: dict[str, int] = {}
        attempts: dict[str, dict[str, int]] = {}
        policy, to_retry = RetryPolicy(), 0
        for reason, tries, count in by_attempts:
            failures[str(reason)] = failures.get(str(reason), 0) + int(count)
            attempts.setdefault(str(reason), {})[str(tries)] = int(count)
            to_retry += int(count) if policy.retries(reason, tries) else 0
        return {
            "items": {str(k): int(v) for k, v in by_status.items()},
            "modalities": {str(k): int(v) for k, v in by_modality.items()},
            "failures": failures,
            "failure_attempts": attempts,  # reason -> {attempts: sources}
            "retried_next_run": to_retry,
            "max_attempts": policy.max_attempts,
            "runs": runs,
            "high_water": self.high_water(),
        }


IN_CHUNK = 1000  # ids per SQL IN list
ITEMS = cast(Table, ItemRow.__table__)  # the table itself: Core inserts skip the ORM's


def _by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by their set of keys (usually one group): a column a row leaves out
    keeps its default, as in a row-by-row insert."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())


def _record_failures(
    s: Session, run_id: int | None, failures: Sequence[NewFailure], indexed: set[str]
) -> None:
    """One failure row per source URI: a new failure is added, a repeated one counts an
    attempt; a source indexed now loses its failure row."""
    uris = [f.source_uri for f in failures] + sorted(indexed)
    existing: dict[str, Failure] = {}
    for start in range(0, len(uris), 500):
        chunk = uris[start : start + 500]
        for row in s.scalars(select(Failure).where(Failure.source_uri.in_(chunk))):
            existing.setdefault(row.source_uri, row)
    for uri in indexed - {f.source_uri for f in failures}:
        if uri in existing:
            s.delete(existing.pop(uri))
    for f in failures:
        if f.source_uri not in existing:
            existing[f.source_uri] = Failure(source_uri=f.source_uri, attempts=0)
            s.add(existing[f.source_uri])
        row = existing[f.source_uri]
        row.reason, row.detail, row.sha256 = f.reason, f.detail[:300], f.sha256
        row.run_id, row.at = run_id, utcnow()
        row.attempts = (row.attempts or 0) + 1


def _user() -> str:
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):
        return ""
