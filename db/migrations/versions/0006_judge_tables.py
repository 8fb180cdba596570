"""the judge stage's results: per-item verdicts (or reward scores) and per-comparison figures

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 02:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _owner_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage_run_id", sa.Integer(), sa.ForeignKey("stage_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("judge", sa.String(300), nullable=False),
        sa.Column("method_a", sa.String(30), nullable=False),
        sa.Column("method_b", sa.String(30), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "judge_verdicts",
        *_owner_columns(),
        sa.Column("prompt_id", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=True),
        sa.Column("a_first_choice", sa.String(1), nullable=True),
        sa.Column("b_first_choice", sa.String(1), nullable=True),
        sa.Column("p_a_first", sa.Float(), nullable=True),
        sa.Column("p_a_second", sa.Float(), nullable=True),
        sa.Column("score_a", sa.Float(), nullable=True),
        sa.Column("score_b", sa.Float(), nullable=True),
        sa.Column("length_a", sa.Integer(), nullable=False),
        sa.Column("length_b", sa.Integer(), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=True),
        sa.UniqueConstraint("stage_run_id", "judge", "method_a", "method_b", "prompt_id", name="uq_judge_verdict_item"),
    )
    op.create_index("ix_judge_verdicts_run_id", "judge_verdicts", ["run_id"])
    op.create_index("ix_judge_verdicts_stage_run_id", "judge_verdicts", ["stage_run_id"])
    op.create_table(
        "judge_figures",
        *_owner_columns(),
        sa.Column("statistic", sa.String(50), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    op.create_index("ix_judge_figures_run_id", "judge_figures", ["run_id"])
    op.create_index("ix_judge_figures_stage_run_id", "judge_figures", ["stage_run_id"])


def downgrade() -> None:
    op.drop_table("judge_figures")
    op.drop_table("judge_verdicts")
