"""The judge stage on a real model: the local judge (SmolLM2-135M-Instruct on the CPU: weak, but real) and the
endpoint judge over real HTTP to an OpenAI-compatible server backed by the same model, through the stage, the queue,
the store and the pages. The tests assert the mechanics, never the judge's taste."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from sqlalchemy import inspect as sql_inspect
from sqlalchemy import select, text
from streamlit.testing.v1 import AppTest

from app.text import shown as displayed
from db.models import JudgeFigure, JudgeVerdict, Run, Sample
from db.session import read_session
from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
from pipeline.core.configs import JudgeConfig, ModelConfig, RunSpec, preset
from pipeline.core.judging import JUDGED, LC_RIDGE, preference
from pipeline.judges import ENDPOINTS_VAR, JudgeItem, ModelJudge, judge_text
from pipeline.stages import read_json, read_jsonl
from pipeline.stages.judge import SUMMARY_OUT, VERDICTS_OUT, run
from tests.judge_server import JudgeServer
from tests.test_queue import drain_queues
from workers import commands, scheduler
from workers.recorder import Recorder

KEY_ENV = "ALIGNLAB_TEST_JUDGE_KEY"
SECRET = "sk-alignlab-test-" + "7f3c9e" * 4
PROMPTS = ["Name a primary colour.", "What is 2 + 2? Answer with a number.", "Give one word for happy.", "Say hi."]
ANSWERS = {  # three methods, so three of JUDGED's comparisons apply
    "sft_dpo": ["Red is a primary colour.", "4", "Joyful.", "Hi there!"],
    "dpo_only": ["Blue, I think, or maybe green or purple.", "2 + 2 = 5", "sad", "Hello."],
    "sft": ["Yellow.", "Four.", "Glad.", "Hi!"],
}


@pytest.fixture(scope="module")
def smol(alignlab_home) -> ModelConfig:
    from pipeline.models import prepare_model

    prepare_model(SMOLLM2_135M_INSTRUCT.name, lambda event: None)
    return ModelConfig(name_or_path=SMOLLM2_135M_INSTRUCT.name, dtype="float32", load_in_8bit=False, device="cpu")


@pytest.fixture(scope="module")
def smol_judge(smol):
    from pipeline.models import loaded

    with loaded(smol) as m:
        yield ModelJudge(m, JudgeConfig(model=smol))


def evaluations(tmp_path) -> dict:
    """Evaluation artifacts (samples.jsonl per method) as the evaluate stage writes them."""
    inputs = {}
    for method, answers in ANSWERS.items():
        folder = tmp_path / f"eval_{method}"
        folder.mkdir()
        rows = [
            {"prompt_id": f"p{i}", "prompt": prompt, "generation": answer}
            for i, (prompt, answer) in enumerate(zip(PROMPTS, answers, strict=True))
        ]
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        inputs[method] = folder
    return inputs


def judge_spec(**judge) -> RunSpec:
    spec = RunSpec(stages=["judge"])
    spec.judge = JudgeConfig(n_bootstrap=200, **judge)
    return spec


def test_the_local_judge_reads_both_orders_from_label_probabilities_and_its_figures_recompute(
    smol, smol_judge, tmp_path
):
    import statsmodels.api as sm

    out = tmp_path / "out"
    out.mkdir()
    result = run(judge_spec(model=smol, batch_size=4), evaluations(tmp_path), out)
    rows = read_jsonl(out / VERDICTS_OUT)
    compared = [(a, b) for a, b in JUDGED if a in ANSWERS and b in ANSWERS]
    assert [(r["method_a"], r["method_b"]) for r in rows] == [c for c in compared for _ in PROMPTS]
    assert result.metrics["judge_tokens_per_s"] > 0 and result.load_info["resolved"].endswith("smollm2-135m-instruct")
    for row in rows:  # each order's probability, its slot, and the outcome the two orders make
        assert 0 <= row["p_a_first"] <= 1 and 0 <= row["p_a_second"] <= 1
        assert row["a_first_choice"] == ("1" if row["p_a_first"] >= 0.5 else "2")
        assert row["b_first_choice"] == ("1" if row["p_a_second"] <= 0.5 else "2")
        same_slot = row["a_first_choice"] == row["b_first_choice"]
        assert (row["outcome"] == "tie") == same_slot
    # both orders were judged: the b-first order, judged on its own, gives the stored probability
    row = rows[1]
    a = ANSWERS[row["method_a"]][1]
    b = ANSWERS[row["method_b"]][1]
    alone = smol_judge.first_slot_probabilities([judge_text(JudgeItem(PROMPTS[1], b, a), 2000)])[0]
    assert 1 - alone == pytest.approx(row["p_a_second"], abs=1e-3)
    alone = smol_judge.first_slot_probabilities([judge_text(JudgeItem(PROMPTS[1], a, b), 2000)])[0]
    assert alone == pytest.approx(row["p_a_first"], abs=1e-3)
    # the stored figures, recomputed from the stored rows with numpy and statsmodels
    figures = {(f["method_a"], f["method_b"], f["statistic"]): f for f in read_json(out / SUMMARY_OUT)}
    for a, b in compared:
        items = [r for r in rows if (r["method_a"], r["method_b"]) == (a, b)]
        y = np.array([preference(r["outcome"]) for r in items])
        assert figures[(a, b, "win_rate")]["value"] == pytest.approx(y.mean())
        assert figures[(a, b, "tie")]["value"] == sum(r["outcome"] == "tie" for r in items)
        deltas = np.array([r["length_a"] - r["length_b"] for r in items], dtype=float)
        x = np.tanh(deltas / deltas.std(ddof=1))
        fit = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit_regularized(
            alpha=np.asarray(LC_RIDGE), L1_wt=0.0
        )
        assert figures[(a, b, "lc_win_rate")]["value"] == pytest.approx(1 / (1 + np.exp(-fit.params[0])), abs=1e-4)
        same_slot = np.mean([r["a_first_choice"] == r["b_first_choice"] for r in items])
        assert figures[(a, b, "position_bias")]["value"] == pytest.approx(same_slot)


def test_the_endpoint_judge_retries_a_failing_server_and_reads_the_same_models_verdicts(
    smol, smol_judge, tmp_path, monkeypatch, alignlab_home
):
    monkeypatch.setenv(KEY_ENV, SECRET)
    local = tmp_path / "local"
    local.mkdir()
    inputs = evaluations(tmp_path)
    run(judge_spec(model=smol), inputs, local)
    with JudgeServer(smol_judge, SECRET, mode="flaky", failures=3) as server:
        monkeypatch.setenv(ENDPOINTS_VAR, f"{server.url}={KEY_ENV}")
        spec = judge_spec(
            kind="endpoint", endpoint_url=server.url, endpoint_model="smol", api_key_env=KEY_ENV, max_retries=4
        )
        out = tmp_path / "endpoint"
        out.mkdir()
        result = run(spec, inputs, out)
    rows = read_jsonl(out / VERDICTS_OUT)
    assert server.failed == 3 and server.requests == 2 * len(rows)  # every order asked once, the 503s retried
    assert result.metrics["unparsed"] == 0 and all(r["outcome"] != "unparsed" for r in rows)
    by_item = {(r["method_a"], r["method_b"], r["prompt_id"]): r for r in read_jsonl(local / VERDICTS_OUT)}
    for row in rows:  # the endpoint answers as the local model does: the same verdicts and probabilities
        same = by_item[(row["method_a"], row["method_b"], row["prompt_id"])]
        assert row["outcome"] == same["outcome"] and row["p_a_first"] == pytest.approx(same["p_a_first"], abs=1e-3)
        assert row["answers"][0] in ("A", "B")


def test_unparseable_answers_are_counted_and_shown_and_a_rerun_pays_nothing_twice(smol_judge, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    inputs = evaluations(tmp_path)
    with JudgeServer(smol_judge, SECRET, mode="garbage") as server:
        monkeypatch.setenv(ENDPOINTS_VAR, f"{server.url}={KEY_ENV}")
        spec = judge_spec(kind="endpoint", endpoint_url=server.url, endpoint_model="smol-garbage", api_key_env=KEY_ENV)
        first = tmp_path / "first"
        first.mkdir()
        result = run(spec, inputs, first)
        asked = server.requests
        again = tmp_path / "again"
        again.mkdir()
        run(spec, inputs, again)  # a resumed or repeated stage: every answer comes from the cache
        assert server.requests == asked
    rows = read_jsonl(first / VERDICTS_OUT)
    garbled = [r for r in rows if any(not a.startswith(("A", "B")) for a in r["answers"])]
    assert 0 < len(garbled) < len(rows)
    assert all(r["outcome"] == "unparsed" for r in garbled) and result.metrics["unparsed"] == len(garbled)
    shown = [f for f in read_json(first / SUMMARY_OUT) if f["statistic"] == "unparsed"]
    assert sum(f["value"] for f in shown) == len(garbled)
    assert read_jsonl(again / VERDICTS_OUT) == rows


def _queued_judge_run(redis_conn, tmp_path, monkeypatch, judge: JudgeConfig) -> dict:
    from db.migrate import upgrade
    from db.session import make_engine

    url = f"sqlite:///{tmp_path / 'judge.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    engine = make_engine(url)
    spec = preset("tiny-ci")
    spec.stages = [*spec.stages, "judge"]
    spec.judge = judge
    run_id = scheduler.submit(spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    return {"engine": engine, "run_id": run_id}


def test_a_queued_local_judge_is_stored_and_shown_on_compare_and_samples_beside_the_reviewers(
    dag_run, smol, redis_conn, tmp_path, monkeypatch
):
    queued = _queued_judge_run(redis_conn, tmp_path, monkeypatch, JudgeConfig(model=smol, max_prompts=3))
    engine, run_id = queued["engine"], queued["run_id"]
    with read_session(engine) as s:
        assert s.get(Run, run_id).status == "succeeded"
        verdicts = s.scalars(select(JudgeVerdict).where(JudgeVerdict.run_id == run_id)).all()
        figures = s.scalars(select(JudgeFigure).where(JudgeFigure.run_id == run_id)).all()
        assert len(verdicts) == len(JUDGED) * 3 and {(v.method_a, v.method_b) for v in verdicts} == set(JUDGED)
        headline = [v for v in verdicts if (v.method_a, v.method_b) == JUDGED[0]]
        raw = next(f for f in figures if (f.method_a, f.method_b, f.statistic) == (*JUDGED[0], "win_rate"))
        parsed = [preference(v.outcome) for v in headline if v.outcome != "unparsed"]
        assert raw.value == pytest.approx(np.mean(parsed)) and raw.n == len(parsed)
        outputs = {
            (x.prompt_id, x.method): x.generation for x in s.scalars(select(Sample).where(Sample.run_id == run_id))
        }
        item = next(v for v in headline if outputs[(v.prompt_id, v.method_a)] != outputs[(v.prompt_id, v.method_b)])
        winner = item.method_a if item.outcome != "a" else item.method_b  # a reviewer who disagrees with the judge
    commands.record_judgement(run_id, item.prompt_id, item.method_a, item.method_b, winner, "ada")
    at = AppTest.from_file("../app/main.py", default_timeout=60).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert any(displayed(h.value) == "Judged comparisons" for h in at.subheader)
    table = next(d.value for d in at.dataframe if "length-controlled (95% CI)" in d.value.columns)
    first = table.set_index("comparison").loc["SFT→DPO vs DPO-only"]
    assert first["win rate (95% CI)"].startswith(f"{raw.value:.3f} ") and first["ties"] == sum(
        v.outcome == "tie" for v in headline
    )
    agreement = next(d.value for d in at.dataframe if "Cohen's kappa" in d.value.columns)
    assert list(agreement["n"]) == [1] and list(agreement["agreement"]) == [0.0]
    assert any(t.value == "Items where they disagree: 1 of 1" for t in at.text)
    at.switch_page("views/samples.py").run()
    assert not at.exception
    shown = next(d.value for d in at.dataframe if "P(a better), a shown first" in d.value.columns)
    assert len(shown) == len(JUDGED)
    asked = shown[~shown["verdict"].str.startswith("tie: identical")]  # identical answers are not judged
    assert all(0 <= float(p) <= 1 for p in asked["P(a better), a shown first"])
    assert all(p == "—" for p in shown[shown["verdict"].str.startswith("tie: identical")]["P(a better), a shown first"])


def _redis_values(conn) -> list[bytes]:
    values: list[bytes] = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key)
        if kind == b"string":
            values.append(conn.get(key) or b"")
        elif kind == b"hash":
            values += [k + b"=" + v for k, v in conn.hgetall(key).items()]
        elif kind == b"list":
            values += conn.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            values += list(conn.smembers(key)) if kind == b"set" else conn.zrange(key, 0, -1)
        elif kind == b"stream":
            values += [json.dumps({k.decode(): v.decode() for k, v in f.items()}).encode() for _, f in conn.xrange(key)]
        values.append(key)
    unpacked = []
    for value in values:  # RQ keeps a job's data zlib-compressed
        try:
            unpacked.append(zlib.decompress(value))
        except zlib.error:
            unpacked.append(value)
    return unpacked


def test_the_api_key_reaches_the_endpoint_and_no_table_event_job_log_or_file(
    dag_run, smol_judge, redis_conn, tmp_path, monkeypatch, alignlab_home, caplog
):
    caplog.set_level("DEBUG")
    monkeypatch.setenv(KEY_ENV, SECRET)
    with JudgeServer(smol_judge, SECRET) as server:
        monkeypatch.setenv(ENDPOINTS_VAR, f"{server.url}={KEY_ENV}")
        judge = JudgeConfig(
            kind="endpoint", endpoint_url=server.url, endpoint_model="smol-queued", api_key_env=KEY_ENV, max_prompts=2
        )
        queued = _queued_judge_run(redis_conn, tmp_path, monkeypatch, judge)
    assert server.requests > 0  # the key was sent (the server refuses any other)
    engine, run_id = queued["engine"], queued["run_id"]
    secret = SECRET.encode()
    tables = sql_inspect(engine).get_table_names()
    with read_session(engine) as s:
        assert s.get(Run, run_id).status == "succeeded"
        assert s.scalar(select(JudgeVerdict.id).where(JudgeVerdict.run_id == run_id)) is not None
        for table in tables:
            for row in s.execute(text(f'SELECT * FROM "{table}"')).all():
                assert SECRET not in str(tuple(row)), f"the key is in table {table}"
    assert not [v for v in _redis_values(redis_conn) if secret in v], "the key is in Redis (events, job arguments)"
    assert SECRET not in caplog.text
    for path in alignlab_home.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert secret not in path.read_bytes(), f"the key is in {path}"


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, alignlab_home):
    """A sequence-classification reward model built offline from the tiny model (a seeded, untrained one-output
    head): real mechanics, no taste."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    target = alignlab_home / "models" / "tiny-reward"
    if not target.exists():
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def test_a_reward_model_scores_each_answer_once_and_its_paired_differences_recompute(tiny_reward_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.core.stats import paired_difference

    model = ModelConfig(name_or_path=str(tiny_reward_model), dtype="float32", load_in_8bit=False, device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    result = run(judge_spec(kind="reward_model", model=model, batch_size=3), evaluations(tmp_path), out)
    assert result.load_info["resolved"] == str(tiny_reward_model)
    rows = read_jsonl(out / VERDICTS_OUT)
    assert all(r.get("outcome") is None and isinstance(r["score_a"], float) for r in rows)
    # one answer's score, recomputed alone with transformers: batching and padding change nothing
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    row = rows[0]
    index = int(row["prompt_id"][1:])
    text = f"{PROMPTS[index]}\n\n{ANSWERS[row['method_a']][index]}"
    with torch.no_grad():
        alone = reference(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert row["score_a"] == pytest.approx(alone, abs=1e-4)
    assert len({r["score_a"] for r in rows}) > 1  # the scores depend on the answer
    figures = {(f["method_a"], f["method_b"], f["statistic"]): f for f in read_json(out / SUMMARY_OUT)}
    a, b = JUDGED[0]
    items = [r for r in rows if (r["method_a"], r["method_b"]) == (a, b)]
    expected = paired_difference(
        {r["prompt_id"]: r["score_a"] for r in items},
        {r["prompt_id"]: r["score_b"] for r in items},
        0.95,
        200,
        0,
        min_discordant=1,
    )
    stored = figures[(a, b, "reward_difference")]
    assert stored["value"] == pytest.approx(np.mean([r["score_a"] - r["score_b"] for r in items]))
    assert (stored["value"], stored["ci_low"], stored["ci_high"], stored["n"]) == pytest.approx(
        (expected["mean"], expected["ci_low"], expected["ci_high"], expected["n"])
    )


def test_the_worker_sends_a_key_only_to_an_endpoint_it_declared_with_that_key(smol_judge, tmp_path, monkeypatch):
    from pipeline.core.errors import ConfigError

    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_worker_secret")
    inputs = evaluations(tmp_path)
    with JudgeServer(smol_judge, SECRET) as server:
        monkeypatch.setenv(ENDPOINTS_VAR, f"{server.url}={KEY_ENV}")
        for url, variable in ((server.url, "HF_TOKEN"), (server.url.replace("/v1", "/v2"), KEY_ENV)):
            # a submitter's URL, or another secret of the worker's: refused before any request is sent
            spec = judge_spec(kind="endpoint", endpoint_url=url, endpoint_model="m", api_key_env=variable)
            with pytest.raises(ConfigError, match=ENDPOINTS_VAR) as caught:
                run(spec, inputs, tmp_path)
            assert SECRET not in str(caught.value) and "hf_worker_secret" not in str(caught.value)
        monkeypatch.delenv(ENDPOINTS_VAR)
        with pytest.raises(ConfigError, match=ENDPOINTS_VAR):
            run(
                judge_spec(kind="endpoint", endpoint_url=server.url, endpoint_model="m", api_key_env=KEY_ENV),
                inputs,
                tmp_path,
            )
    assert server.received == 0  # nothing was sent anywhere
