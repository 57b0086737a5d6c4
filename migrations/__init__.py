"""Alembic migrations of the catalog schema; shipped with the package and run on open."""
