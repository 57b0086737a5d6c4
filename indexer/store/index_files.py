"""Published index versions on disk: write new files, fsync, switch a pointer atomically.

Layout under the store's root (the index directory, never a path from user input)::

    CURRENT                               the published version's name
    versions/v000042-20261122T101500Z/    one directory per version
        index.faiss                       faiss.write_index output (instances)
        series.faiss                      the series index (series vectors), if any
        manifest.json                     IndexManifest: facts, counts, model, sha256

A version is written into ``versions/.tmp-<name>/``, its files and directory fsynced, then
renamed into place; ``CURRENT`` is replaced by ``os.replace`` of a fsynced ``CURRENT.tmp``
and the root fsynced. A reader therefore sees the old version or the new one, never a half
written file, and a crash leaves at most a temporary directory that the next publish
removes. The newest ``keep`` versions stay (a reader that resolved ``CURRENT`` just before
a publish can still open its version); older ones are deleted, never the current one.

A missing or damaged index is an error (:class:`IndexMissingError`,
:class:`IndexCorruptError`), never an empty index.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import faiss
from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.errors import IndexCorruptError, IndexMissingError, ModelMismatchError
from indexer.store.vector_index import BuildFacts, BuiltIndex, ready

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SERIES_FILE = "series.faiss"
MANIFEST_FILE = "manifest.json"
POINTER_FILE = "CURRENT"
VERSIONS_DIR = "versions"
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".publish.lock"
VERSION_RE = re.compile(r"^v(\d{6,})-(\d{8}T\d{6}Z)$")
READ_ATTEMPTS = 3
REBUILD_HINT = "run `medsearch index rebuild`"

T = TypeVar("T")


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    size: int


class SeriesManifest(BaseModel):
    """The series index of a version: series vectors pooled from the instances'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    pooling: str
    revision: int  # the catalog's series revision it holds (see indexer.store.series)
    facts: BuildFacts


class IndexManifest(BaseModel):
    """What a published version holds and how it was built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    created_at: dt.datetime
    facts: BuildFacts
    count: int  # vectors in the index now (facts.count is at build time)
    catalog_high_water: int  # the largest catalog id considered
    catalog_id: str | None = None  # the catalog it was built from (None: before 0.1 rev 0002)
    model_fingerprint: str
    recipe: str
    render_policy: str
    embedding_dim: int
    deleted_since_build: int = 0
    series: SeriesManifest | None = None  # None: published before series vectors
    files: dict[str, FileEntry]


@dataclass
class LoadedIndex:
    index: Any  # a faiss.Index (untyped)
    manifest: IndexManifest
    series: Any = None  # the series index, when the version has one


@dataclass
class SeriesIndex:
    """A series index to publish with the instance index."""

    built: BuiltIndex
    pooling: str
    revision: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _counter(name: str) -> int | None:
    match = VERSION_RE.match(name.removeprefix(TMP_PREFIX))
    return int(match.group(1)) if match else None


class IndexStore:
    """The versions of one index under ``root``; one publisher at a time (a file lock)."""

    def __init__(self, root: Path, *, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 versions (the current one and its predecessor)")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / VERSIONS_DIR

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def versions(self) -> list[str]:
        """Complete versions on disk, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if VERSION_RE.match(p.name)]
        return sorted(names, key=lambda name: _counter(name) or 0)

    def _next_name(self, now: dt.datetime) -> str:
        counters = [_counter(p.name) for p in self.versions_dir.iterdir()]
        last = max((c for c in counters if c is not None), default=0)
        return f"v{last + 1:06d}-{now:%Y%m%dT%H%M%SZ}"

    def publish(
        self,
        built: BuiltIndex,
        manifest_extra: Mapping[str, Any],
        series: SeriesIndex | None = None,
    ) -> IndexManifest:
        """Write ``built`` (and ``series``, in the same version: both or neither are
        published) as a new version and make it current; returns its manifest.

        ``manifest_extra`` holds the catalog side: ``catalog_high_water``,
        ``model_fingerprint``, ``recipe``, ``render_policy`` and optionally
        ``deleted_since_build``, ``count`` and ``embedding_dim`` (checked against the index).
        """
        index = built.index
        count, dim = int(index.ntotal), int(index.d)
        extra = dict(manifest_extra)
        if extra.setdefault("count", count) != count:
            raise ValueError(f"manifest count {extra['count']} != {count} vectors in the index")
        if extra.setdefault("embedding_dim", dim) != dim or built.facts.dim != dim:
            raise ValueError(f"embedding_dim {extra['embedding_dim']} != index dimension {dim}")
        if series is not None:
            extra["series"] = {
                "count": int(series.built.index.ntotal),
                "pooling": series.pooling,
                "revision": series.revision,
                "facts": series.built.facts,
            }
        reserved = {"version", "created_at", "facts", "files"} & extra.keys()
        if reserved:
            raise ValueError(f"manifest_extra may not set {sorted(reserved)}")
        with self._lock():
            for stale in self.versions_dir.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            name = self._next_name(now)
            draft = IndexManifest.model_validate(
                {**extra, "version": name, "created_at": now, "facts": built.facts, "files": {}}
            )  # refuses a bad manifest_extra before anything is written
            tmp = self.versions_dir / f"{TMP_PREFIX}{name}"
            tmp.mkdir()
            try:
                files = {INDEX_FILE: self._write_index(index, tmp / INDEX_FILE)}
                if series is not None:
                    files[SERIES_FILE] = self._write_index(series.built.index, tmp / SERIES_FILE)
                manifest = draft.model_copy(update={"files": files})
                _write_synced(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(tmp)
            os.rename(tmp, self.versions_dir / name)
            _fsync_dir(self.versions_dir)
            pointer_tmp = self.root / f"{POINTER_FILE}.tmp"
            _write_synced(pointer_tmp, f"{name}\n".encode())
            os.replace(pointer_tmp, self.root / POINTER_FILE)
            _fsync_dir(self.root)
            self._prune(current=name)
        logger.info("published index %s: %d vectors (%s)", name, count, built.facts.kind)
        return manifest

    @staticmethod
    def _write_index(index: Any, path: Path) -> FileEntry:
        digest = hashlib.sha256()
        size = 0
        with open(path, "wb") as f:

            def write(chunk: bytes) -> int:
                nonlocal size
                digest.update(chunk)
                size += len(chunk)
                return f.write(chunk)

            writer = faiss.PyCallbackIOWriter(write)  # type: ignore[attr-defined]  # not in the stubs
            faiss.write_index(index, writer)
            del writer  # flushes its buffer into ``write``
            f.flush()
            os.fsync(f.fileno())
        return FileEntry(sha256=digest.hexdigest(), size=size)

    def _prune(self, *, current: str) -> None:
        for name in self.versions()[: -self.keep]:
            if name != current:
                shutil.rmtree(self.versions_dir / name, ignore_errors=True)
                logger.info("removed old index version %s", name)

    # -- reading -------------------------------------------------------------------------

    def _pointer(self) -> str | None:
        try:
            name = (self.root / POINTER_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise IndexCorruptError(f"cannot read {POINTER_FILE}: {err}; {REBUILD_HINT}") from err
        if not VERSION_RE.match(name):
            raise IndexCorruptError(
                f"{POINTER_FILE} does not name a version (got {name[:40]!r}); {REBUILD_HINT}"
            )
        return name

    def _version_dir(self, name: str) -> Path:
        path = self.versions_dir / name
        if path.is_symlink() or not path.is_dir():
            raise IndexMissingError(
                f"{POINTER_FILE} names index version {name}, which is not in "
                f"{self.versions_dir}; {REBUILD_HINT}"
            )
        return path

    def _manifest(self, name: str) -> IndexManifest:
        path = self._version_dir(name) / MANIFEST_FILE
        try:
            manifest = IndexManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as err:
            raise IndexCorruptError(f"index version {name}: bad manifest; {REBUILD_HINT}") from err
        if manifest.version != name or INDEX_FILE not in manifest.files:
            raise IndexCorruptError(f"index version {name}: manifest mismatch; {REBUILD_HINT}")
        return manifest

    def _resolve(self, read: Callable[[str], T]) -> T | None:
        """``read(name)`` of the version ``CURRENT`` names; ``None`` if never published.

        A publish may move ``CURRENT`` on and prune the version being read meanwhile: the
        read is retried on the new version then, and an error raised only if ``CURRENT``
        did not change (or kept changing).
        """
        attempt = 0
        while True:
            attempt += 1
            name = self._pointer()
            if name is None:
                return None
            try:
                return read(name)
            except (IndexMissingError, IndexCorruptError):
                if attempt >= READ_ATTEMPTS or self._pointer() == name:
                    raise

    def current(self) -> IndexManifest | None:
        """The published version's manifest; ``None`` only if nothing was ever published."""
        return self._resolve(self._manifest)

    def load(self, *, verify: bool = True, model_fingerprint: str | None = None) -> LoadedIndex:
        """Read the published index; ``verify`` checks its sha256 while reading.

        Raises :class:`IndexMissingError` if nothing is published or ``CURRENT`` names a
        missing version, :class:`IndexCorruptError` if the file does not match its manifest,
        :class:`ModelMismatchError` if ``model_fingerprint`` is given and differs.
        """
        loaded = self._resolve(lambda name: self._load_version(name, verify))
        if loaded is None:
            raise IndexMissingError(
                f"no index published in {self.root}: run `medsearch index build`"
            )
        if model_fingerprint is not None and model_fingerprint != loaded.manifest.model_fingerprint:
            raise ModelMismatchError(
                f"index {loaded.manifest.version} holds embeddings of model "
                f"{loaded.manifest.model_fingerprint[:16]}, not {model_fingerprint[:16]}"
            )
        return loaded

    def _load_version(self, name: str, verify: bool) -> LoadedIndex:
        manifest = self._manifest(name)
        index = self._load_file(name, INDEX_FILE, manifest, verify)
        if int(index.ntotal) != manifest.count or int(index.d) != manifest.embedding_dim:
            raise IndexCorruptError(
                f"index version {name}: {INDEX_FILE} does not hold what its manifest says; "
                f"{REBUILD_HINT}"
            )
        series = None
        if manifest.series is not None:
            series = self._load_file(name, SERIES_FILE, manifest, verify)
            if int(series.ntotal) != manifest.series.count:
                raise IndexCorruptError(
                    f"index version {name}: {SERIES_FILE} does not hold what its manifest "
                    f"says; {REBUILD_HINT}"
                )
        return LoadedIndex(index=index, manifest=manifest, series=series)

    def _load_file(self, name: str, file: str, manifest: IndexManifest, verify: bool) -> Any:
        entry = manifest.files.get(file)
        bad = f"index version {name}: {file}"
        if entry is None:
            raise IndexCorruptError(f"{bad} is not in its manifest; {REBUILD_HINT}")
        try:
            with open(self.versions_dir / name / file, "rb") as f:  # survives a prune
                return self._read_index(f, entry, verify, bad)
        except FileNotFoundError as err:
            raise IndexCorruptError(f"{bad} is missing; {REBUILD_HINT}") from err

    @staticmethod
    def _read_index(f: BinaryIO, entry: FileEntry, verify: bool, bad: str) -> Any:
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            raise IndexCorruptError(
                f"{bad} is {size} bytes, its manifest says {entry.size} "
                f"(truncated or replaced); {REBUILD_HINT}"
            )
        digest = hashlib.sha256()

        def read(n: int) -> bytes:
            chunk = f.read(n)
            if verify:
                digest.update(chunk)
            return chunk

        try:
            reader = faiss.PyCallbackIOReader(read)  # type: ignore[attr-defined]  # not in the stubs
            index = faiss.read_index(reader)
        except RuntimeError as err:
            raise IndexCorruptError(f"{bad} cannot be read; {REBUILD_HINT}") from err
        if verify:
            digest.update(f.read())  # anything FAISS did not consume counts too
            if digest.hexdigest() != entry.sha256:
                raise IndexCorruptError(f"{bad} fails its sha256 check; {REBUILD_HINT}")
        return ready(index)
