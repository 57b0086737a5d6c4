"""near-duplicate hashes (items.phash) and watch cursors (sync_cursors)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phash", sa.String(16), nullable=True))
    op.create_table(
        "sync_cursors",
        sa.Column("source", sa.String(500), primary_key=True),
        sa.Column("cursor", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_cursors")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("phash")
