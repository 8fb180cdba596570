"""every (stage run, metric, step) once; non-finite metric values; dead-lettered events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # rows recorded twice before this key existed: keep the latest point of each (stage run, name, step)
    op.execute(
        "DELETE FROM metrics WHERE id NOT IN (SELECT keep FROM (SELECT MAX(id) AS keep FROM metrics "
        "GROUP BY stage_run_id, name, step) AS latest)"
    )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_metrics_curve")
        batch_op.alter_column("value", existing_type=sa.Float(), nullable=True)
        batch_op.add_column(sa.Column("non_finite", sa.String(length=10), nullable=True))
        batch_op.create_unique_constraint("uq_metrics_stage_run_name_step", ["stage_run_id", "name", "step"])
    op.create_table(
        "dead_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stream_id", sa.String(length=50), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_events")),
    )
    with op.batch_alter_table("dead_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_events_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_events_run_id"))
    op.drop_table("dead_events")
    op.execute("DELETE FROM metrics WHERE value IS NULL")
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_constraint("uq_metrics_stage_run_name_step", type_="unique")
        batch_op.drop_column("non_finite")
        batch_op.alter_column("value", existing_type=sa.Float(), nullable=False)
        batch_op.create_index("ix_metrics_curve", ["stage_run_id", "name", "step"], unique=False)
