"""labels JSON with non-ASCII characters kept (SQLite)

Label columns named outside ASCII (``Körperteil``) were stored ``\\u``-escaped, as
``json.dumps`` writes by default, and SQLite's ``json_extract`` matches a key as stored:
such a column could never be filtered on. Catalogs now write JSON with the characters
kept (``indexer.store.db``); this rewrites the rows written before. PostgreSQL reads
escaped keys correctly: nothing to do there. The downgrade keeps the rows (the same JSON).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 20:45:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
BATCH = 1000


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    escaped = sa.text(
        "SELECT id, labels FROM items WHERE id > :after AND labels LIKE '%\\u%' "
        "ORDER BY id LIMIT :n"
    )
    rewrite = sa.text("UPDATE items SET labels = :labels WHERE id = :id")
    after = 0
    while rows := bind.execute(escaped, {"after": after, "n": BATCH}).all():
        for row_id, text in rows:
            kept = json.dumps(json.loads(text), ensure_ascii=False)
            if kept != text:
                bind.execute(rewrite, {"labels": kept, "id": row_id})
        after = rows[-1][0]


def downgrade() -> None:
    pass
