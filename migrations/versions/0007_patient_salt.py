"""catalog_info.patient_salt: which MEDSEARCH_PATIENT_HASH_SALT made the patient keys

A check value of the salt (an HMAC of a fixed text under it, never the salt), ``""`` for
builds without one, ``NULL`` for catalogs from before this revision (the next build records
its own). Builds and the service compare theirs with it: two salts in one catalog gave one
patient two keys, and ``exclude_same_patient`` silently stopped excluding.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_salt", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("catalog_info", schema=None) as batch_op:
        batch_op.drop_column("patient_salt")
