"""catalog id: a random id per catalog, recorded in each index manifest

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:45:00
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.add_column(sa.Column("catalog_id", sa.String(length=32), nullable=True))
    info = sa.table("catalog_info", sa.column("id", sa.Integer), sa.column("catalog_id"))
    connection = op.get_bind()
    for (row_id,) in connection.execute(sa.select(info.c.id)).all():
        connection.execute(
            info.update().where(info.c.id == row_id).values(catalog_id=uuid.uuid4().hex)
        )


def downgrade() -> None:
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.drop_column("catalog_id")
