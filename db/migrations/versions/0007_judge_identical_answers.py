"""a judged item whose two answers are identical: tied without asking the judge, left out of its position bias

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("judge_verdicts") as batch:
        batch.add_column(sa.Column("identical", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("judge_verdicts") as batch:
        batch.drop_column("identical")
