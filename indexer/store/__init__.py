"""The store: the catalog (SQLAlchemy, schema by Alembic) and the FAISS index derived from it."""

from indexer.store.index_files import IndexManifest, IndexStore, LoadedIndex
from indexer.store.vector_index import BuildFacts, BuiltIndex, add, build_index, remove, search

__all__ = [
    "BuildFacts",
    "BuiltIndex",
    "IndexManifest",
    "IndexStore",
    "LoadedIndex",
    "add",
    "build_index",
    "remove",
    "search",
]
