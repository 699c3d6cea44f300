"""Signal triggers skip the NOTIFY while a listener is awake (the wake protocol).

Revision ID: 5e8a2c7d4f13
Revises: 3c1f7e5a9b20
Create Date: 2026-12-01 03:40:00.000000
"""

from alembic import op

import signalbus.alembic  # noqa: F401

# revision identifiers, used by Alembic.
revision = "5e8a2c7d4f13"
down_revision = "3c1f7e5a9b20"
branch_labels = None
depends_on = None


def upgrade():
    op.replace_signal_function()


def downgrade():
    # Nothing to undo: the function serves listeners of every version, and those
    # that do not take the wake protocol's locks get every notification.
    pass
