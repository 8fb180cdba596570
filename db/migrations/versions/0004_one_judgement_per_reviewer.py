"""one judgement per reviewer, prompt and method pair: the pair stored in one order and made unique

Earlier duplicates (the same reviewer judging the same item again) keep their first judgement.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PAIR = "CASE WHEN method_a < method_b THEN method_a || '|' || method_b ELSE method_b || '|' || method_a END"


def upgrade() -> None:
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pair", sa.String(length=61), nullable=True))
    op.execute(f"UPDATE judgements SET pair = {PAIR}")
    op.execute(
        "DELETE FROM judgements WHERE id NOT IN "
        "(SELECT MIN(id) FROM judgements GROUP BY run_id, prompt_id, pair, reviewer)"
    )
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.alter_column("pair", existing_type=sa.String(length=61), nullable=False)
        batch_op.create_unique_constraint("uq_judgement_per_reviewer", ["run_id", "prompt_id", "pair", "reviewer"])


def downgrade() -> None:
    with op.batch_alter_table("judgements", schema=None) as batch_op:
        batch_op.drop_constraint("uq_judgement_per_reviewer", type_="unique")
        batch_op.drop_column("pair")
