"""Signal payloads hold the message body as JSON text, encoded once.

Revision ID: 3c1f7e5a9b20
Revises: b379b5b052d7
Create Date: 2026-11-29 13:52:00.000000
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "3c1f7e5a9b20"
down_revision = "b379b5b052d7"
branch_labels = None
depends_on = None

SIGNAL_TABLES = ("order_placed_signal", "order_shipped_signal")


def upgrade():
    for table in SIGNAL_TABLES:
        op.alter_column(
            table,
            "payload",
            type_=sa.Text(),
            existing_type=sa.JSON(),
            existing_nullable=False,
            postgresql_using="payload::text",
        )


def downgrade():
    for table in SIGNAL_TABLES:
        op.alter_column(
            table,
            "payload",
            type_=sa.JSON(),
            existing_type=sa.Text(),
            existing_nullable=False,
            postgresql_using="payload::json",
        )
