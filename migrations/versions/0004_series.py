"""series: one pooled vector per DICOM series (series search); the slice sample size

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("series_description", sa.String(64), nullable=True),
        sa.Column("body_part_examined", sa.String(64), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("member_id_sum", sa.BigInteger(), nullable=False),
        sa.Column("pooling", sa.String(16), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_series_study", "series", ["study_instance_uid"])
    op.create_index("ix_series_revision", "series", ["revision"])
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.add_column(sa.Column("series_sample", sa.Integer(), nullable=True))
    op.create_index("ix_items_series_status", "items", ["series_instance_uid", "status"])


def downgrade() -> None:
    op.drop_index("ix_items_series_status", table_name="items")
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.drop_column("series_sample")
    op.drop_index("ix_series_revision", table_name="series")
    op.drop_index("ix_series_study", table_name="series")
    op.drop_table("series")
