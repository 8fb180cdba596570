"""`alignlab`: the pipeline CLI plus the commands of the queued system (up, submit, runs, status, cancel,
resume, retry, db upgrade). Runs launched here go through the same scheduler as the dashboard."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from pipeline.cli import add_spec_arguments, build_parser, spec_from_args
from pipeline.core.errors import AlignlabError
from pipeline.core.home import alignlab_home

ROOT = Path(__file__).resolve().parents[1]


def _engine():
    from db.session import write_engine

    return write_engine()


def cmd_db(args: argparse.Namespace) -> int:
    from db.migrate import current, upgrade
    from db.session import database_url

    upgrade()
    print(f"database {database_url()} at revision {current()}")
    return 0


def planned_power(spec, engine=None):
    """The run's power plan, with a pilot from the earlier runs of its model and data in the database if any."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.queries import pilot_prompt_means
    from pipeline.planning import power_plan

    try:
        pilot, source = pilot_prompt_means(
            spec.base_model.name_or_path, spec.data.instructions, spec.compare.primary_metric, engine
        )
    except SQLAlchemyError as exc:  # no database yet (a first run, before `up`): planned without a pilot, said so
        print(f"power: no pilot read from the database ({type(exc).__name__}); planning on the stated assumption")
        pilot, source = [], ""
    return power_plan(spec, pilot, source)


def check_power(spec, engine=None) -> bool:
    """Print the plan; False when the run cannot reach its target and its config says refuse (nothing queued)."""
    plan = planned_power(spec, engine)
    if plan is None:
        print(f"power: unknown before the worker reads {spec.data.instructions!r}")
        return True
    print(f"power: {plan.text()}")
    if not plan.reaches_target and spec.compare.underpowered == "refuse" and "compare" in spec.stages:
        print(
            "refused (CompareConfig.underpowered: refuse): raise the held-out prompts (more data, "
            "split.heldout_fraction, eval.max_prompts) or compare.target_difference; nothing was queued",
            file=sys.stderr,
        )
        return False
    return True


def cmd_plan(args: argparse.Namespace) -> int:
    """The power plan of a config, before anything runs."""
    check_power(spec_from_args(args), None)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from workers.queues import connect
    from workers.scheduler import submit

    spec = spec_from_args(args)
    if not check_power(spec, _engine()):
        return 2
    run_id = submit(spec, connect(), _engine(), tags=args.tag or [])
    print(f"run {run_id} submitted: {spec.name} ({len(spec.stages)} stages); follow it with `alignlab status {run_id}`")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from db.queries import list_runs

    rows = list_runs(status=args.status, limit=args.limit)
    print(f"{'id':>5}  {'status':<10} {'stages':<7} {'created':<19}  name")
    for row in rows:
        created = f"{row['created_at']:%Y-%m-%d %H:%M:%S}"
        print(f"{row['id']:>5}  {row['status']:<10} {row['done']}/{row['total']:<5} {created}  {row['name']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from workers.commands import run_summary

    summary = run_summary(args.run)
    print(
        f"run {summary['id']} {summary['name']}: {summary['status']}"
        + (f" — {summary['error']}" if summary["error"] else "")
    )
    for stage in summary["stages"]:
        line = f"  {stage['node']:<14} {stage['status']:<10} attempt {stage['attempt']}  {stage['progress']}"
        print(line + (f"  {stage['error']}" if stage["error"] else ""))
    return 0 if summary["status"] != "failed" else 1


def cmd_workers(args: argparse.Namespace) -> int:
    from workers.fleet import fleet_table
    from workers.queues import connect

    rows = fleet_table(connect())
    if not rows:
        print("no worker has reported in the last day (start one: python -m workers, or alignlab up)")
        return 0
    columns = ("worker", "state", "host", "queues", "device", "memory", "job", "last heartbeat", "jobs done")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from pipeline.core.configs import QUEUE_NAMES
    from pipeline.core.errors import ConfigError
    from pipeline.core.prices import load_prices, prices_path, set_price

    if args.action == "set" and (args.queue is None or args.price is None):
        raise ConfigError("usage: alignlab prices set QUEUE PRICE_PER_HOUR, e.g. alignlab prices set gpu 0.79")
    prices = set_price(args.queue, args.price) if args.action == "set" else load_prices()
    print(f"prices per hour ({prices_path()}):")
    for queue in QUEUE_NAMES:
        price = prices.price(queue)
        print(f"  {queue:<10} {prices.money(price) if price is not None else 'no price: costs unknown'}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from workers.commands import cancel
    from workers.queues import connect

    cancel(args.run, connect(), _engine())
    print(f"run {args.run} cancelled")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from workers.queues import connect
    from workers.scheduler import resume

    print(f"run {args.run}: {resume(args.run, connect(), _engine())}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from workers.queues import connect
    from workers.scheduler import retry

    print(f"stage run {args.stage_run}: {retry(args.stage_run, connect(), _engine())}")
    return 0


def stage_changes(seen: dict[str, str], summary: dict, since_s: float) -> list[str]:
    """One line per stage (and run) whose status changed since `seen` (updated), with the time since start:
    `00:41 train_sft succeeded (5.4 s)`; the run's own line once it ends."""
    from pipeline.core.durations import human_duration

    clock = f"{int(since_s) // 60:02d}:{int(since_s) % 60:02d}"
    lines, queued = [], []
    for stage in summary["stages"]:
        if seen.get(stage["node"]) == stage["status"]:
            continue
        first = stage["node"] not in seen
        seen[stage["node"]] = stage["status"]
        if first and stage["status"] == "queued":  # the initial plan: one line for all of it
            queued.append(stage["node"])
            continue
        took = f" ({human_duration(stage['seconds'])})" if stage["seconds"] is not None else ""
        error = f": {stage['error']}" if stage["error"] and stage["status"] == "failed" else ""
        lines.append(f"{clock} {stage['node']} {stage['status']}{took}{error}")
    if queued:
        lines.insert(0, f"{clock} queued: {', '.join(queued)}")
    if seen.get("") != summary["status"] and summary["status"] not in ("queued", "running"):
        lines.append(f"{clock} run {summary['id']} {summary['status']}")
    seen[""] = summary["status"]
    return lines


def cmd_up(args: argparse.Namespace) -> int:
    """Embedded Redis (unless REDIS_URL), migrations, recorder, one worker and the dashboard, supervised: a child
    that dies is restarted with backoff; Ctrl-C or SIGTERM stops everything, running jobs included."""
    from db.migrate import upgrade
    from db.session import database_url
    from workers.queues import EmbeddedRedis, connect, embedded_socket
    from workers.supervisor import Supervisor

    if args.home:
        os.environ["ALIGNLAB_HOME"] = str(args.home)
    logs = alignlab_home() / "logs"
    supervisor = Supervisor(ROOT, log_dir=logs)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    try:
        if not os.environ.get("REDIS_URL"):
            embedded = EmbeddedRedis()
            supervisor.start("redis", embedded.argv())
            embedded.wait_ready()
            print(f"redis: embedded, socket {embedded_socket()} (AOF on; restarted if it dies)")
        else:
            print("redis: REDIS_URL")
        upgrade()
        print(f"database: {database_url()}")
        print(f"logs: {logs}/ (recorder.log, worker.log, dashboard.log: library output and progress bars)")
        supervisor.start("recorder", [sys.executable, "-m", "workers.recorder"])
        worker = [sys.executable, "-m", "workers", "--queues", args.queues, "--job-process", args.job_process]
        supervisor.start("worker", worker)
        supervisor.start(
            "dashboard",
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "app" / "server.py"),
                "--server.address",
                args.host,
                "--server.port",
                str(args.port),
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
        )
        print(f"dashboard: http://{args.host}:{args.port}")
        run_id = None
        if args.config or args.preset:
            from workers.scheduler import submit

            spec = spec_from_args(args)
            if not check_power(spec, _engine()):
                return 2
            run_id = submit(spec, connect(), _engine())
            print(f"run {run_id} submitted; `alignlab status {run_id}` shows it")
        print("alignlab is up; Ctrl-C stops everything", flush=True)
        status_connection = connect()
        started, seen = time.monotonic(), {}
        while not stopping["now"]:
            time.sleep(1)
            supervisor.poll()
            _publish_supervised(status_connection, supervisor)
            if run_id is not None:
                from db.models import RunStatus
                from workers.commands import run_summary

                summary = run_summary(run_id)
                for line in stage_changes(seen, summary, time.monotonic() - started):
                    print(line, flush=True)
                if args.exit_when_done and RunStatus(summary["status"]).final:
                    return 0 if summary["status"] == "succeeded" else 1
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop(last=["redis"])  # Redis last: a worker flags its preemption there as it stops
        restarts = ", ".join(f"{name} {n}" for name, n in supervisor.restarts().items() if n)
        print("alignlab stopped" + (f" (restarts: {restarts})" if restarts else ""), flush=True)
    return 0


def _publish_supervised(connection, supervisor) -> None:
    """The supervised processes for the Workers page; skipped while Redis itself is being restarted."""
    import redis

    from workers.fleet import publish_supervised

    try:
        publish_supervised(connection, supervisor.status_rows())
    except (redis.ConnectionError, redis.TimeoutError):
        pass


def _redis_check():
    from pipeline.preflight import Check
    from workers.queues import connect

    try:
        connect().ping()
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return Check("Redis reachable with auth", False, f"{type(exc).__name__}: {exc}")
    url = os.environ.get("REDIS_URL")
    where = "REDIS_URL" if url else "the embedded server"
    return Check("Redis reachable with auth", True, f"PING answered by {where}")


def cmd_preflight(args: argparse.Namespace) -> int:
    """Go / no-go on this machine for a config: environment checks, then the whole DAG at tiny scale."""
    from pipeline.preflight import dag_check, environment_checks, verdict

    spec = spec_from_args(args)
    home = alignlab_home()
    checks = environment_checks(spec, home, _redis_check)
    if not args.checks_only:
        checks.append(dag_check(spec, home))
    result = verdict(checks)
    for check in result["checklist"]:
        mark = "ok  " if check["passed"] else ("FAIL" if check["required"] else "info")
        print(f"{mark} {check['item']}: {check['reason']}")
    print("GO" if result["go"] else "NO-GO")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_record:
        from workers.scheduler import record_preflight

        try:
            from db.migrate import upgrade

            upgrade()
            run_id = record_preflight(spec, result, checks_only=args.checks_only)
            print(f"recorded as run {run_id} (tag preflight) for the dashboard")
        except Exception as exc:  # noqa: BLE001 - the verdict stands without a database
            print(f"warning: not recorded in the database: {exc}", file=sys.stderr)
    return 0 if result["go"] else 1


def build_full_parser() -> argparse.ArgumentParser:
    from workers.worker import JOB_PROCESSES

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    up = sub.add_parser("up", help="Start Redis (embedded unless REDIS_URL), recorder, worker and dashboard.")
    add_spec_arguments(up)
    up.add_argument("--queues", default="gpu,gpu-80gb,cpu", help="Queues the local worker serves.")
    up.add_argument("--host", default="127.0.0.1", help="Dashboard address (localhost unless you mean otherwise).")
    up.add_argument("--port", type=int, default=8501)
    up.add_argument(
        "--job-process",
        choices=sorted(JOB_PROCESSES),
        default="reuse",
        help="How the local worker runs jobs: reuse (default: in its own process, warm; this supervisor restarts it "
        "if a job takes it down) or fork (each job in a fresh process).",
    )
    up.add_argument("--exit-when-done", action="store_true", help="Stop once the submitted run is finished.")
    up.set_defaults(func=cmd_up)

    submit = sub.add_parser("submit", help="Queue a run (needs `alignlab up` or REDIS_URL and a recorder).")
    add_spec_arguments(submit, home=False)
    submit.add_argument("--tag", action="append", help="Tag the run (repeatable).")
    submit.set_defaults(func=cmd_submit)

    plan = sub.add_parser(
        "plan", help="Power before the run: the minimum detectable difference and the prompts the target needs."
    )
    add_spec_arguments(plan, home=False)
    plan.set_defaults(func=cmd_plan)

    runs = sub.add_parser("runs", help="List runs.")
    runs.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    runs.add_argument("--limit", type=int, default=50)
    runs.set_defaults(func=cmd_runs)

    workers = sub.add_parser("workers", help="List the workers: device, memory, job, heartbeat; lost ones too.")
    workers.set_defaults(func=cmd_workers)

    prices = sub.add_parser("prices", help="Show or set the price per hour of each GPU class (queue).")
    prices.add_argument("action", nargs="?", choices=("show", "set"), default="show")
    prices.add_argument("queue", nargs="?", help="With set: the queue (GPU class).")
    prices.add_argument("price", nargs="?", type=float, help="With set: its price per hour, e.g. 0.79.")
    prices.set_defaults(func=cmd_prices)

    for name, func, text in (
        ("status", cmd_status, "Show a run's stages."),
        ("cancel", cmd_cancel, "Cancel a run: queued jobs cancelled, the running one stopped."),
        ("resume", cmd_resume, "Re-enqueue what is not complete; training resumes from its checkpoint."),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("run", type=int)
        command.set_defaults(func=func)
    retry = sub.add_parser("retry", help="Re-enqueue one stage run and its unfinished dependents.")
    retry.add_argument("stage_run", type=int)
    retry.set_defaults(func=cmd_retry)

    preflight = sub.add_parser("preflight", help="Go / no-go for a config on this machine (a RunPod pod).")
    add_spec_arguments(preflight)
    preflight.add_argument("--checks-only", action="store_true", help="Skip the DAG at tiny scale.")
    preflight.add_argument("--out", type=Path, help="Write the checklist as JSON.")
    preflight.add_argument("--no-record", action="store_true", help="Do not store the checklist in the database.")
    preflight.set_defaults(func=cmd_preflight)

    db = sub.add_parser("db", help="Database maintenance.")
    db.add_argument("action", choices=("upgrade",), help="upgrade: apply Alembic migrations up to head.")
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_full_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (AlignlabError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
