"""The database: the one source of truth for the dashboard. SQLAlchemy 2.0 typed models, no torch."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


class StageStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    cached = "cached"

    @property
    def done(self) -> bool:
        return self in (StageStatus.succeeded, StageStatus.cached)

    @property
    def final(self) -> bool:
        return self in (StageStatus.succeeded, StageStatus.cached, StageStatus.failed, StageStatus.cancelled)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.queued.value, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    preset: Mapped[str] = mapped_column(String(100), default="custom")
    base_model: Mapped[str] = mapped_column(String(500), default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    group_name: Mapped[str | None] = mapped_column(String(200), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    stages: Mapped[list[StageRun]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="StageRun.id"
    )
    parent: Mapped[Run | None] = relationship(remote_side=[id])


class StageRun(Base):
    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("run_id", "node", name="uq_stage_runs_run_node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    node: Mapped[str] = mapped_column(String(50))  # "dpo_sft", "eval_base", ...
    stage: Mapped[str] = mapped_column(String(50))
    role: Mapped[str | None] = mapped_column(String(50))  # init of train_dpo, method of evaluate
    status: Mapped[str] = mapped_column(String(20), default=StageStatus.queued.value, index=True)
    queue: Mapped[str] = mapped_column(String(50), default="gpu")
    rq_job_id: Mapped[str | None] = mapped_column(String(200), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    artifact_key: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_message: Mapped[str] = mapped_column(String(500), default="")
    load_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    device: Mapped[str | None] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    checks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(200))
    # the ledger: every attempt's wall time, and its cost at its queue's price when it ended (None: no price)
    charged_seconds: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime)  # its job named (enqueued right after the commit)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    run: Mapped[Run] = relationship(back_populates="stages")


class Artifact(Base):
    __tablename__ = "artifacts"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    stage: Mapped[str] = mapped_column(String(50))
    location: Mapped[str] = mapped_column(String(1000))  # path on the worker's volume: never read by the dashboard
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    first_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ValidationReportRow(Base):
    __tablename__ = "validation_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    source: Mapped[str] = mapped_column(String(1000))
    passed: Mapped[bool] = mapped_column(Boolean)
    rows_read: Mapped[int] = mapped_column(Integer)
    rows_valid: Mapped[int] = mapped_column(Integer)
    n_errors: Mapped[int] = mapped_column(Integer)
    n_warnings: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Metric(Base):
    """One point of a training curve. Every (stage run, name, step) exists once: a restarted attempt replaces
    the steps it redoes. A non-finite value (NaN, inf) is kept as NULL with `non_finite` saying which."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("stage_run_id", "name", "step", name="uq_metrics_stage_run_name_step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)
    non_finite: Mapped[str | None] = mapped_column(String(10))  # "nan", "inf", "-inf"


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_run_method", "run_id", "method", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(30))
    metric: Mapped[str] = mapped_column(String(100))
    negative_type: Mapped[str | None] = mapped_column(String(50))
    value: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer, default=0)


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_run_prompt", "run_id", "prompt_id", "method"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(30))
    prompt_id: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[str] = mapped_column(Text)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Preview(Base):
    """Bounded previews the stages emit (SFT records, negatives, pairs, token-mask examples, reports)."""

    __tablename__ = "previews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    rows: Mapped[list[Any]] = mapped_column(JSON)


def judged_pair(method_a: str, method_b: str) -> str:
    """The two methods of a judgement in one order ("dpo_only|sft_dpo"), whichever side each was shown on."""
    return "|".join(sorted((method_a, method_b)))


class Judgement(Base):
    """One reviewer's blind A/B verdict on one prompt and method pair (one per reviewer, item and pair)."""

    __tablename__ = "judgements"
    __table_args__ = (UniqueConstraint("run_id", "prompt_id", "pair", "reviewer", name="uq_judgement_per_reviewer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(String(32))
    method_a: Mapped[str] = mapped_column(String(30))  # shown on the left
    method_b: Mapped[str] = mapped_column(String(30))  # shown on the right
    pair: Mapped[str] = mapped_column(String(61))  # judged_pair(method_a, method_b)
    winner: Mapped[str] = mapped_column(String(30))  # a method name, or "tie"
    reviewer: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JudgeVerdict(Base):
    """One judged item: a prompt's answers of two methods, judged in both orders by a pairwise judge (outcome,
    each order's slot and probability) or scored one by one by a reward model (score_a, score_b)."""

    __tablename__ = "judge_verdicts"
    __table_args__ = (
        UniqueConstraint("stage_run_id", "judge", "method_a", "method_b", "prompt_id", name="uq_judge_verdict_item"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    judge: Mapped[str] = mapped_column(String(300))
    method_a: Mapped[str] = mapped_column(String(30))
    method_b: Mapped[str] = mapped_column(String(30))
    prompt_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(10))  # a / b / tie / unparsed; None for a reward model
    a_first_choice: Mapped[str | None] = mapped_column(String(1))  # slot chosen with a shown first ("1" / "2")
    b_first_choice: Mapped[str | None] = mapped_column(String(1))  # slot chosen with b shown first
    p_a_first: Mapped[float | None] = mapped_column(Float)  # P(judge prefers a), a shown first (local judges)
    p_a_second: Mapped[float | None] = mapped_column(Float)  # P(judge prefers a), a shown second
    score_a: Mapped[float | None] = mapped_column(Float)  # reward model scores
    score_b: Mapped[float | None] = mapped_column(Float)
    length_a: Mapped[int] = mapped_column(Integer)  # characters of each answer (the length control's input)
    length_b: Mapped[int] = mapped_column(Integer)
    answers: Mapped[list[Any] | None] = mapped_column(JSON)  # an endpoint's raw answers in the two orders
    # the two answers were the same text: tied without asking the judge (None: recorded before this was told apart)
    identical: Mapped[bool | None] = mapped_column(Boolean)


class JudgeFigure(Base):
    """One figure of one judged comparison (win_rate, lc_win_rate, position_bias, reward_difference, counts...)."""

    __tablename__ = "judge_figures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id", ondelete="CASCADE"), index=True)
    judge: Mapped[str] = mapped_column(String(300))
    method_a: Mapped[str] = mapped_column(String(30))
    method_b: Mapped[str] = mapped_column(String(30))
    statistic: Mapped[str] = mapped_column(String(50))
    value: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer, default=0)


class RecordedEvent(Base):
    """Event ids already applied: the recorder's idempotency (a redelivered event is skipped)."""

    __tablename__ = "recorded_events"
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(30))
    run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DeadEvent(Base):
    """An event the recorder could not write (malformed, or refused by the database): kept with the reason, so that
    one bad event never blocks the stream and nothing is dropped without a trace."""

    __tablename__ = "dead_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(50))
    event_id: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str | None] = mapped_column(String(30))
    run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    error: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
