"""A new stage and a new metric are one declaration each: the plan, the CLI, the queue, the store and the Compare
page follow from the registries."""

from pipeline.core import metrics, registry
from pipeline.core.configs import RunSpec, from_dict, to_dict
from pipeline.core.metrics import Metric
from pipeline.core.registry import NodeSpec, Stage

TOY_STAGE = Stage(
    "toy_summary",
    "tests.toy_stage",
    "Count the held-out pairs (a test's toy stage).",
    ("pairs",),
    (NodeSpec("toy", inputs=(("pairs", "pairs"),)),),
    timeout_s=600,
    queue="cpu",
)
TOY_METRIC = Metric(
    "exclamation_rate", "exclamations", "share", "sample", lambda s: float("!" in s.text), False, "Says '!'."
)


def test_a_toy_stage_and_a_toy_metric_reach_plan_cli_store_and_compare_page(
    dag_run, tiny_ci_spec, redis_conn, tmp_path, monkeypatch, alignlab_home
):
    from db.migrate import upgrade
    from db.models import Evaluation, StageRun
    from db.session import make_engine, read_session
    from pipeline.cli import build_parser
    from pipeline.dag import default_store
    from pipeline.stages.pairs import HELDOUT
    from tests.test_dashboard import app
    from tests.test_queue import drain_queues
    from workers import scheduler
    from workers.recorder import Recorder

    registry.register(TOY_STAGE, before="compare")
    metrics.register(TOY_METRIC)
    try:
        nodes = {node.name: node for node in registry.plan()}
        assert nodes["toy"].stage == "toy_summary" and nodes["toy"].inputs == {"pairs": "pairs"}
        assert "toy" in nodes["compare"].inputs  # compare reads every node before it
        args = build_parser().parse_args(["toy_summary", "--preset", "tiny-ci"])
        assert args.stage == "toy_summary"
        data = to_dict(tiny_ci_spec)
        data["stages"] = list(registry.STAGES)
        spec = from_dict(RunSpec, data)
        assert spec.execution.timeout_for("toy_summary") == 600 and spec.execution.queue_for("toy_summary") == "cpu"
        assert "exclamation_rate" in registry.stage("evaluate").config_slice(spec, "base")["metrics"]

        url = f"sqlite:///{tmp_path / 'toy.db'}"
        upgrade(url)
        monkeypatch.setenv("DATABASE_URL", url)
        engine = make_engine(url)
        run_id = scheduler.submit(spec, redis_conn, engine)
        drain_queues(redis_conn)
        Recorder(redis_conn, engine).drain()
        with read_session(engine) as session:
            toy = session.query(StageRun).filter_by(run_id=run_id, node="toy").one()
            pairs_key = session.query(StageRun).filter_by(run_id=run_id, node="pairs").one().artifact_key
            # the held-out pairs as the pairs stage wrote them, read here, not through the toy stage
            heldout = (default_store().path(pairs_key) / HELDOUT).read_text().splitlines()
            assert len(heldout) > 0
            assert (toy.status, toy.queue, toy.metrics["pairs"]) == ("succeeded", "cpu", len(heldout))
            stored = {e.metric for e in session.query(Evaluation).filter_by(run_id=run_id)}
        assert "exclamation_rate" in stored

        at = app().run()
        at.switch_page("views/compare.py").run()
        assert not at.exception
        assert "exclamation_rate" in at.selectbox(key="compare_metric").options
        at.selectbox(key="compare_metric").set_value("exclamation_rate").run()
        table = at.dataframe[0].value  # the methods table of the chosen metric
        assert sorted(table["method"]) == ["base", "dpo_only", "sft", "sft_dpo"]
        assert table["value"].between(0, 1).all() and (table["n"] > 0).all()
    finally:
        registry.unregister("toy_summary")
        metrics.unregister("exclamation_rate")
