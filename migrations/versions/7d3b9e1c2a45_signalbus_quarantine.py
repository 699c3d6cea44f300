"""The quarantine of signal rows whose send keeps failing on its own.

Revision ID: 7d3b9e1c2a45
Revises: 5e8a2c7d4f13
Create Date: 2026-12-01 07:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "7d3b9e1c2a45"
down_revision = "5e8a2c7d4f13"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "signalbus_quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("signal_table", sa.Text(), nullable=False),
        sa.Column("row_key", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("row_values", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "signalbus_quarantine_open_row",
        "signalbus_quarantine",
        ["signal_table", "row_key"],
        unique=True,
        postgresql_where=sa.text("quarantined_at IS NULL"),
    )


def downgrade():
    op.drop_index("signalbus_quarantine_open_row", table_name="signalbus_quarantine")
    op.drop_table("signalbus_quarantine")
