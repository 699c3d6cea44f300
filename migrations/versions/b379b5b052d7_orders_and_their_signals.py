"""Orders and their signals.

Revision ID: b379b5b052d7
Revises:
Create Date: 2026-11-29 12:51:48.567016
"""

import sqlalchemy as sa
from alembic import op

import signalbus.alembic  # noqa: F401  (registers op.create_signal_trigger)

# revision identifiers, used by Alembic.
revision = "b379b5b052d7"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("customer", sa.String(length=100), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("total_cents >= 0", name="orders_total_cents_check"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "order_placed_signal",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_signal_trigger("order_placed_signal")
    op.create_table(
        "order_shipped_signal",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_signal_trigger("order_shipped_signal")


def downgrade():
    op.drop_signal_trigger("order_shipped_signal")
    op.drop_table("order_shipped_signal")
    op.drop_signal_trigger("order_placed_signal")
    op.drop_table("order_placed_signal")
    op.drop_table("orders")
