"""medsearch indexer: encoders, imaging, sources, store, bulk pipeline and the CLI.

This package must import without FastAPI; ``service`` builds on it, never the reverse.
"""

__version__ = "0.1.0"
