"""The decision stage from recorded evidence (stage rows, evaluation rows, per-example files), on SQLite
and on a real PostgreSQL server, and the promote branch: a failing deploy hook leaves the champion in
place, records why and alerts; a working one (a fake vLLM server over real HTTP) moves the alias and
loads the adapter."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flywheel.config import FlywheelConfig
from flywheel.context import RunContext
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision
from flywheel.decide.evidence import decide_run
from flywheel.deliver import tasks as deliver
from flywheel.deliver.approval import approval_request
from flywheel.deliver.registry import champion, get_version, history, promote, register_version
from flywheel.errors import PromotionFailedError
from flywheel.evaluate.tasks import current_champion
from flywheel.report.data import report_data
from flywheel.tracking import ensure_run, record_evaluation, record_stage

pytest_plugins = ["vllm_server"]

WORKLOAD = "customer_support_router"
START = datetime(2026, 11, 20, 2, tzinfo=UTC)
END = datetime(2026, 11, 21, 2, tzinfo=UTC)
N = 120


def run_context(config: FlywheelConfig, dag_run_id: str) -> RunContext:
    return RunContext.of(config, WORKLOAD, interval_start=START, interval_end=END, dag_run_id=dag_run_id)


def write_examples(path: Path, right: int) -> str:
    """``examples.jsonl`` of a model that gets the first ``right`` of N examples right."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "example_id": f"e{i:03d}",
            "eval_set": "evaluation",
            "scores": {"function_name": i < right, "function_name_and_args": i < right, "ast": i < right},
            "tool_calls": [] if i < right else None,
        }
        for i in range(N)
    ]
    (path / "examples.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path / "examples.jsonl")


def evaluation_result(examples_uri: str, right: int, model: dict[str, Any]) -> dict[str, Any]:
    value = right / N
    metric = {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": N}
    return {
        "model": model,
        "examples": N,
        "examples_hash": "same",
        "metrics": {"function_name_accuracy": metric, "function_name_and_args_accuracy": metric},
        "latency_s": {"mean": 0.1, "p50": 0.1, "p95": 0.2},
        "examples_uri": examples_uri,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The metadata database of the test: a SQLite file, or a new database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'flywheel.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())


@pytest.fixture
def decided(make_config, metadata_url: str, tmp_path: Path) -> tuple[FlywheelConfig, dict[str, Any]]:
    """A run whose stages succeeded, with the registry's v1 as champion (60 of 120 right) and a
    customized challenger (90 right) evaluated on the same examples; the decision is made."""
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}, "bootstrap_resamples": 200},
    )
    metadata = config.metadata
    old_run = ensure_run(
        metadata,
        workload_id=WORKLOAD,
        dag_id="flywheel_x",
        dag_run_id="old",
        interval_start=START,
        interval_end=END,
    )
    v1 = register_version(
        metadata,
        workload_id=WORKLOAD,
        run_id=old_run,
        candidate_id="tiny",
        eval_type="customized",
        model={"base_model": "base", "adapter": str(tmp_path / "v1")},
        dataset_id="old",
    )
    promote(metadata, WORKLOAD, v1.version, actor="test", reason="first")
    dag_run_id = "manual__2026-11-21T02:00:00+00:00"
    run_id = ensure_run(
        metadata,
        workload_id=WORKLOAD,
        dag_id=config.workload(WORKLOAD).dag_id,
        dag_run_id=dag_run_id,
        interval_start=START,
        interval_end=END,
    )
    summaries = {
        "build_dataset": {"dataset_id": "ds-1"},
        "train": {
            "candidates": [
                {
                    "candidate_id": "tiny",
                    "status": "succeeded",
                    "output_uri": str(tmp_path / "t"),
                    "init_from": {"parent_version": 1, "adapter": str(tmp_path / "v1")},
                }
            ]
        },
    }
    for stage in ("extract", "validate", "build_dataset", "train", "evaluate"):
        with record_stage(metadata, run_id, stage) as handle:
            handle.summary = summaries.get(stage, {})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for candidate_id, eval_type, right, model in (
        ("champion", "champion", 60, {"base_model": "base", "adapter": str(tmp_path / "v1"), "version": 1}),
        ("tiny", "base", 10, {"base_model": "base"}),
        ("tiny", "customized", 90, {"base_model": "base", "adapter": str(adapter)}),
    ):
        examples = write_examples(tmp_path / "evaluate" / candidate_id / eval_type, right)
        record_evaluation(
            metadata,
            run_id,
            workload_id=WORKLOAD,
            dataset_id="ds-1",
            candidate_id=candidate_id,
            eval_type=eval_type,
            model=model,
            result_uri=str(Path(examples).with_name("result.json")),
            result=evaluation_result(examples, right, model),
            error=None,
        )
    summary = decide_run(config, WORKLOAD, run_id) | {
        "interval_start": START.isoformat(),
        "interval_end": END.isoformat(),
    }
    return config, summary | {"dag_run_id": dag_run_id}


def test_the_decision_pairs_the_evidence_and_registers_the_challenger(decided) -> None:
    config, summary = decided

    assert summary["outcome"] == "promote"
    assert [r["code"] for r in summary["reasons"]] == ["challenger_superior"]
    assert (summary["champion"], summary["champion_version"]) == ("champion/champion", 1)
    assert (summary["challenger"], summary["challenger_version"]) == ("tiny/customized", 2)
    # Its training started from the champion's adapter (the train stage summary says so): lineage.
    assert get_version(config.metadata, WORKLOAD, 2).parent_version == 1
    assert summary["figures"]["difference"] == pytest.approx(0.25)
    assert summary["report_uri"].endswith(f"reports/{WORKLOAD}/2026-11-20/run-report.html")
    with session_scope(config.metadata) as session:
        row = session.scalar(select(Decision))
        assert row.champion_version_id is not None
        assert row.comparisons["function_name_and_args_accuracy"]["challenger_only"] == 30
        assert [c["eval_type"] for c in row.candidates] == ["customized", "base"]
        assert row.policy["floor"] == 0.5
    data = report_data(config, WORKLOAD, summary["dag_run_id"])
    assert data is not None and data["decision"]["outcome"] == "promote"
    assert [s["stage"] for s in data["stages"]] == [
        "extract",
        "validate",
        "build_dataset",
        "train",
        "evaluate",
    ]


def test_a_tool_shift_flagged_by_validation_is_recorded_with_the_promotion(decided) -> None:
    """The run's validation passed but flagged a tool shift (``tool_shift_action: alert``, e.g. an API
    change): the challenger, better on that data, is still promoted, and the decision records the shift."""
    config, _ = decided
    with session_scope(config.metadata) as session:
        run_id = session.scalar(select(Decision.run_id))
    # A second try of the stage, as the validate task records it (the fields decide reads).
    with record_stage(config.metadata, run_id, "validate", try_number=2) as stage:
        stage.summary = {"day": "2026-11-20", "tool_shift": 1.5604, "tool_shift_exceeded": True}

    summary = decide_run(config, WORKLOAD, run_id)

    assert summary["outcome"] == "promote"
    assert summary["reasons"][1] == {
        "code": "tool_shift",
        "message": "the tool-call distribution of 2026-11-20 shifted from the previous days': KL divergence "
        "1.560 above max_tool_shift 0.5 (changed or new tools)",
    }
    with session_scope(config.metadata) as session:
        row = session.scalar(select(Decision))
        assert row.outcome == "promote"
        assert [r["code"] for r in row.reasons] == ["challenger_superior", "tool_shift"]


def test_a_failing_deploy_hook_leaves_the_champion_and_alerts(
    decided, make_config, metadata_url: str, monkeypatch: pytest.MonkeyPatch, refused_url: str
) -> None:
    _, summary = decided
    monkeypatch.setenv("AIRFLOW_CONN_VLLM_ROUTER", json.dumps({"conn_type": "http", "host": refused_url}))
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}},
        deploy={"type": "vllm", "conn_id": "vllm_router"},
    )

    with pytest.raises(PromotionFailedError, match="the champion is unchanged"):
        deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert champion(config.metadata, WORKLOAD).version == 1
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1]
    with session_scope(config.metadata) as session:
        promotion = session.scalar(select(Decision)).promotion
    assert promotion["status"] == "failed" and "vllm_router" in promotion["error"]
    sink = Path(config.artifact_store.root, "alerts", WORKLOAD, "2026-11-20")
    (alert,) = [json.loads(p.read_text()) for p in sink.glob("*-alert.json")]
    assert alert["reasons"][0]["code"] == "promotion_failed"


def test_promotion_loads_the_adapter_and_moves_the_alias(
    decided, make_config, metadata_url: str, monkeypatch: pytest.MonkeyPatch, vllm_server
) -> None:
    _, summary = decided
    monkeypatch.setenv("AIRFLOW_CONN_VLLM_ROUTER", json.dumps({"conn_type": "http", "host": vllm_server.url}))
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}},
        deploy={"type": "vllm", "conn_id": "vllm_router"},
    )

    promotion = deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert (promotion["version"], promotion["previous_version"]) == (2, 1)
    current = champion(config.metadata, WORKLOAD)
    assert current.version == 2 and current.eval_type == "customized"
    assert vllm_server.loaded == {f"{WORKLOAD}-v2": current.adapter_uri}
    last = history(config.metadata, WORKLOAD)[-1]
    assert last.actor == f"flywheel_{WORKLOAD}/{summary['dag_run_id']}"
    assert "beats the champion" in last.reason
    with session_scope(config.metadata) as session:
        assert session.scalar(select(Decision)).promotion["deployment"]["type"] == "vllm"


def test_a_deploy_that_timed_out_after_vllm_loaded_it_is_taken_back(
    decided, make_config, metadata_url: str, monkeypatch: pytest.MonkeyPatch, vllm_server
) -> None:
    """vLLM loads the challenger's adapter and the answer is lost (the hook's timeout): the registry
    keeps the champion, the adapter is unloaded, so serving agrees, and the record and the alert say so."""
    _, summary = decided
    monkeypatch.setenv("AIRFLOW_CONN_VLLM_ROUTER", json.dumps({"conn_type": "http", "host": vllm_server.url}))
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}},
        deploy={"type": "vllm", "conn_id": "vllm_router", "timeout_s": 0.5},
    )
    vllm_server.faults.append({"apply": True, "delay_s": 10})  # loads it, then answers too late

    with pytest.raises(
        PromotionFailedError, match=r"promotion failed, the champion is unchanged: .*ReadTimeout"
    ):
        deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert champion(config.metadata, WORKLOAD).version == 1
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1]
    assert vllm_server.loaded == {}  # loaded, then taken back: serving and the registry agree
    promotion = _promotion_of(config)
    assert (promotion["status"], promotion["version"], promotion["challenger_version"]) == (
        "deploy_uncertain",
        1,
        2,
    )
    deployment = promotion["deployment"]
    assert deployment["idempotency_key"] == f"{WORKLOAD}/v2/decision-{summary['decision_id']}"
    assert deployment["sent"]["body"] == {
        "lora_name": f"{WORKLOAD}-v2",
        "lora_path": get_version(config.metadata, WORKLOAD, 2).adapter_uri,
    }
    assert "ReadTimeout" in deployment["error"]
    assert (deployment["undeploy"]["status"], deployment["serving_agrees"]) == ("undeployed", True)
    (alert,) = _sink(config, "alert")
    assert alert["reasons"][0]["code"] == "deploy_uncertain"
    assert f"serving ran {WORKLOAD} v2 and it was taken back" in alert["reasons"][0]["message"]


def test_an_uncertain_deploy_that_cannot_be_taken_back_alerts_and_a_rerun_reconciles(
    decided, make_config, metadata_url: str, monkeypatch: pytest.MonkeyPatch, http_server
) -> None:
    """A webhook receiver applies the promotion and its answer is lost; the webhook cannot undeploy, so
    the alert says that serving may run the challenger. Clearing ``promote`` re-sends the same
    idempotency key, the receiver answers, and the registry moves to what serving runs."""
    _, summary = decided
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROMOTE_HOOK", json.dumps({"conn_type": "http", "host": http_server.url})
    )
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}},
        deploy={"type": "webhook", "conn_id": "promote_hook", "timeout_s": 0.3, "max_retries": 0},
    )
    http_server.faults.append({"apply": True, "delay_s": 10})

    with pytest.raises(
        PromotionFailedError, match="the registry keeps version 1, but SERVING MAY RUN version 2"
    ):
        deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert champion(config.metadata, WORKLOAD).version == 1
    promotion = _promotion_of(config)
    assert (promotion["status"], promotion["deployment"]["serving_agrees"]) == ("deploy_uncertain", False)
    (alert,) = _sink(config, "alert")
    assert alert["reasons"][0]["code"] == "deploy_uncertain"
    assert f"SERVING MAY RUN {WORKLOAD} v2 while the registry keeps v1" in alert["reasons"][0]["message"]

    outcome = deliver.promote(run_context(config, summary["dag_run_id"]), summary)  # the task cleared

    assert (outcome["status"], outcome["version"]) == ("promoted", 2)
    assert champion(config.metadata, WORKLOAD).version == 2
    key = f"{WORKLOAD}/v2/decision-{summary['decision_id']}"
    assert [r.headers["idempotency-key"] for r in http_server.requests] == [key, key]
    assert _promotion_of(config)["status"] == "promoted"


def test_an_icl_champion_is_registered_and_re_evaluated_with_its_shots(decided, tmp_path: Path) -> None:
    from flywheel.compute import evaluate_job
    from flywheel.config import ModelConfig

    config, _ = decided
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id="flywheel_x",
        dag_run_id="icl",
        interval_start=START,
        interval_end=END,
    )
    icl = register_version(
        config.metadata,
        workload_id=WORKLOAD,
        run_id=run_id,
        candidate_id="tiny",
        eval_type="icl",
        model={"base_model": "base", "few_shot": True},
        dataset_id="ds-1",
    )
    promote(
        config.metadata, WORKLOAD, icl.version, actor="ann", reason="icl is enough", action="manual_promote"
    )

    model, version = current_champion(run_context(config, "icl"))

    assert (model, version) == (ModelConfig(base_model="base", few_shot=True), icl.version)
    job = evaluate_job(
        config,
        config.workload(WORKLOAD),
        model,
        eval_type="champion",
        candidate_id="champion",
        dataset_uri=str(tmp_path / "ds"),
        day=START.date(),
        dag_run_id="r",
    )
    assert job.arguments[-1] == "--few-shot"
    assert dict(zip(job.arguments[1::2], job.arguments[2::2], strict=False))["--base-model"] == "base"


def test_the_decision_registers_an_icl_challenger_as_few_shot(make_config, tmp_path: Path) -> None:
    config = make_config(
        decision={"floor": 0.0, "min_examples": 10, "guardrails": {}, "bootstrap_resamples": 200}
    )
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id="flywheel_x",
        dag_run_id="r",
        interval_start=START,
        interval_end=END,
    )
    for stage in ("extract", "validate", "build_dataset", "train", "evaluate"):
        with record_stage(config.metadata, run_id, stage) as handle:
            handle.summary = {"dataset_id": "ds"} if stage == "build_dataset" else {}
    for eval_type, right in (("base", 10), ("icl", 80)):
        examples = write_examples(tmp_path / eval_type, right)
        record_evaluation(
            config.metadata,
            run_id,
            workload_id=WORKLOAD,
            dataset_id="ds",
            candidate_id="tiny",
            eval_type=eval_type,
            model={"base_model": "base"},
            result_uri=str(tmp_path / eval_type / "result.json"),
            result=evaluation_result(examples, right, {"base_model": "base"}),
            error=None,
        )

    summary = decide_run(config, WORKLOAD, run_id)

    assert (summary["outcome"], summary["challenger"]) == ("promote", "tiny/icl")
    assert champion(config.metadata, WORKLOAD) is None  # decided, not yet promoted
    from flywheel.deliver.registry import get_version

    assert get_version(config.metadata, WORKLOAD, summary["challenger_version"]).model == {
        "base_model": "base",
        "few_shot": True,
    }


def test_promoting_again_after_a_promotion_is_a_no_op(decided) -> None:
    config, summary = decided

    first = deliver.promote(run_context(config, summary["dag_run_id"]), summary)
    again = deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert first["status"] == "promoted"
    assert again == {"status": "already_champion", "version": 2}
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1, 2]


def test_the_champion_is_the_registered_copy_of_its_adapter_after_its_day_is_cleared(
    decided, tmp_path: Path
) -> None:
    from flywheel.compute import evaluate_job

    config, summary = decided
    trained = tmp_path / "adapter"  # the challenger's training output
    original = {p.name: p.read_bytes() for p in trained.iterdir()}
    deliver.promote(run_context(config, summary["dag_run_id"]), summary)
    shutil.rmtree(trained)  # a re-run of the day clears its run directory

    current = champion(config.metadata, WORKLOAD)
    assert current.adapter_sha256 is not None
    assert current.adapter_uri == f"{config.artifact_store.root}/models/{WORKLOAD}/{current.adapter_sha256}"
    model, version = current_champion(run_context(config, "the next night"))
    assert (model.adapter, version) == (current.adapter_uri, 2)
    committed = Path(model.adapter)
    assert {p.name: p.read_bytes() for p in committed.iterdir() if p.name != "_model.json"} == original
    job = evaluate_job(
        config,
        config.workload(WORKLOAD),
        model,
        eval_type="champion",
        candidate_id="champion",
        dataset_uri=str(tmp_path / "ds"),
        day=START.date(),
        dag_run_id="r",
    )
    assert job.arguments[job.arguments.index("--adapter") + 1] == current.adapter_uri


def test_two_promote_tasks_of_one_decision_at_once_promote_and_deploy_once(
    decided, make_config, metadata_url: str, monkeypatch: pytest.MonkeyPatch, http_server
) -> None:
    _, summary = decided
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROMOTE_HOOK", json.dumps({"conn_type": "http", "host": http_server.url})
    )
    config = make_config(
        metadata_url=metadata_url,
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}},
        deploy={"type": "webhook", "conn_id": "promote_hook"},
    )
    # The first deploy attempt gets a 503 and retries after 0.5 s: the other task arrives meanwhile.
    http_server.faults.append({"status": 503, "body": "warming up"})
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = deliver.promote(run_context(config, summary["dag_run_id"]), summary)["status"]
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(map(str, outcomes.values())) == ["already_champion", "promoted"], outcomes
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1, 2]
    key = f"{WORKLOAD}/v2/decision-{summary['decision_id']}"
    assert [r.headers["idempotency-key"] for r in http_server.requests] == [key, key]  # one deploy, retried
    assert history(config.metadata, WORKLOAD)[-1].deployment["idempotency_key"] == key


def _champion_from_another_run(config: FlywheelConfig, tmp_path: Path, interval_end: datetime) -> int:
    """Register and promote a version evaluated by a run whose interval ends at ``interval_end``."""
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id="flywheel_x",
        dag_run_id=f"other-{interval_end.isoformat()}",
        interval_start=interval_end.replace(day=interval_end.day - 1),
        interval_end=interval_end,
    )
    other = register_version(
        config.metadata,
        workload_id=WORKLOAD,
        run_id=run_id,
        candidate_id="tiny",
        eval_type="icl",
        model={"base_model": "base", "few_shot": True},
        dataset_id="other",
    )
    promote(config.metadata, WORKLOAD, other.version, actor="another run", reason="its own evidence")
    return other.version


def _promotion_of(config: FlywheelConfig) -> dict[str, Any]:
    with session_scope(config.metadata) as session:
        return session.scalar(select(Decision)).promotion


def test_a_champion_chosen_on_newer_data_supersedes_the_decision(decided, tmp_path: Path) -> None:
    """A backfill of an old night (or one overlapping the scheduled run) never replaces a champion that
    a newer night chose: its decision is recorded as superseded and the task succeeds."""
    config, summary = decided
    newer = _champion_from_another_run(config, tmp_path, datetime(2026, 11, 24, 2, tzinfo=UTC))

    outcome = deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert outcome["status"] == "superseded"
    assert (
        "chosen on data up to 2026-11-24T02:00:00+00:00, newer than this run's interval" in outcome["reason"]
    )
    assert champion(config.metadata, WORKLOAD).version == newer
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1, newer]
    assert _promotion_of(config) == outcome | {"challenger_version": summary["challenger_version"]}


def test_a_champion_that_moved_during_the_run_supersedes_the_decision(decided, tmp_path: Path) -> None:
    """The champion this run evaluated was replaced (on data no newer than this run's) while it ran: the
    decision was made against the wrong champion, so it is superseded, not promoted and not a red run."""
    config, summary = decided
    moved = _champion_from_another_run(config, tmp_path, END)

    outcome = deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    assert (outcome["status"], outcome["version"]) == ("superseded", moved)
    assert outcome["reason"] == f"the champion moved to version {moved} while this run evaluated version 1"
    assert champion(config.metadata, WORKLOAD).version == moved
    assert _promotion_of(config)["status"] == "superseded"


def test_a_retry_after_the_promotion_keeps_what_the_first_attempt_recorded(decided) -> None:
    config, summary = decided
    deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    deliver.promote(run_context(config, summary["dag_run_id"]), summary)

    recorded = _promotion_of(config)
    assert (recorded["status"], recorded["version"], recorded["previous_version"]) == ("promoted", 2, 1)


def _sink(config: FlywheelConfig, event: str) -> list[dict[str, Any]]:
    """The local sink's notifications of ``event`` for the run's day."""
    folder = Path(config.artifact_store.root) / "alerts" / WORKLOAD / START.date().isoformat()
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*-{event}.json"))]


def test_a_dry_run_is_decided_recorded_and_notified_but_moves_nothing(decided) -> None:
    config, summary = decided
    with session_scope(config.metadata) as session:
        run_id = session.scalar(select(Decision.run_id))
    dry = decide_run(config, WORKLOAD, run_id, dry_run=True) | {
        key: summary[key] for key in ("interval_start", "interval_end", "dag_run_id")
    }

    outcome = deliver.promote(run_context(config, summary["dag_run_id"]), dry)

    assert (dry["outcome"], dry["dry_run"], dry["challenger_version"]) == ("promote", True, 2)
    assert outcome == {
        "status": "dry_run",
        "version": 1,
        "challenger_version": 2,
        "reason": "a dry run (param dry_run): the champion alias did not move",
    }
    assert champion(config.metadata, WORKLOAD).version == 1
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1]
    with session_scope(config.metadata) as session:
        row = session.scalar(select(Decision))
        assert (row.dry_run, row.promotion) == (True, outcome)
    (notice,) = _sink(config, "promote")
    assert notice["dry_run"] is True
    assert notice["title"] == f"{WORKLOAD}: tiny/customized would be promoted to champion (dry run)"


def test_an_approved_promotion_names_the_approver_in_the_audit_row(decided) -> None:
    config, summary = decided
    approval = {
        "chosen_options": ["Approve"],
        "params_input": {"comment": "the new tools look right"},
        "responded_at": datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
        "responded_by_user": {"id": "alice", "name": "alice"},
    }

    promotion = deliver.promote(run_context(config, summary["dag_run_id"]), summary, approval)

    assert (promotion["status"], promotion["version"]) == ("promoted", 2)
    assert promotion["approval"] == {
        "status": "approved",
        "by": {"id": "alice", "name": "alice"},
        "comment": "the new tools look right",
        "responded_at": "2026-11-21T09:30:00+00:00",
    }
    last = history(config.metadata, WORKLOAD)[-1]
    assert last.actor == f"alice (approved flywheel_{WORKLOAD}/{summary['dag_run_id']})"
    assert "beats the champion" in last.reason
    assert last.reason.endswith("; approved by alice: the new tools look right")
    assert _promotion_of(config) == promotion


@pytest.mark.parametrize(
    ("response", "reason", "message"),
    [
        (
            {
                "chosen_options": ["Reject"],
                "params_input": {"comment": "wait for the API change"},
                "responded_at": datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
                "responded_by_user": {"id": "7", "name": "Bob"},
                "timedout": False,
            },
            "rejected",
            "Bob (id 7) rejected the promotion: wait for the API change",
        ),
        (
            # What the scheduler answers when nobody did: the default option, no responder.
            {
                "chosen_options": ["Reject"],
                "params_input": {"comment": ""},
                "responded_at": datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
                "responded_by_user": None,
                "timedout": True,
            },
            "timed out",
            "nobody approved the promotion within 24 hours (decision.approval_timeout_hours)",
        ),
    ],
    ids=["rejected", "timed_out"],
)
def test_a_rejected_or_unanswered_approval_keeps_the_champion(
    decided, response: dict[str, Any], reason: str, message: str
) -> None:
    config, summary = decided

    outcome = deliver.not_approved(run_context(config, summary["dag_run_id"]), summary, response)

    assert (outcome["status"], outcome["reason"], outcome["version"]) == ("not_approved", reason, 1)
    assert outcome["approval"]["by"] == response["responded_by_user"]
    assert champion(config.metadata, WORKLOAD).version == 1
    assert [m.version for m in history(config.metadata, WORKLOAD)] == [1]
    assert _promotion_of(config) == outcome
    (notice,) = _sink(config, "not_approved")
    assert notice["reasons"][0] == {
        "code": "not_approved",
        "message": f"{message}; the champion is unchanged",
    }
    assert notice["title"] == f"{WORKLOAD}: tiny/customized was not approved; the champion stays"


def test_the_approval_request_carries_the_decisions_evidence(decided) -> None:
    config, summary = decided
    link = f"flywheel/reports/{WORKLOAD}/2026-11-20/run-report.html"

    subject, body = approval_request(run_context(config, summary["dag_run_id"]), summary, report_url=link)

    assert subject == f"{WORKLOAD}: promote tiny/customized (version 2) to champion?"
    lines = body.splitlines()
    assert "- Champion: champion/champion (version 1)" in lines
    assert "- Challenger: tiny/customized (version 2)" in lines
    assert any(
        line.startswith("- `challenger_superior`: tiny/customized beats the champion") for line in lines
    )
    # Each side with its evaluation's 95% interval, the paired difference with its own.
    (primary,) = [line for line in lines if line.startswith("| function_name_and_args_accuracy (primary) |")]
    assert "| 0.500 [0.400, 0.600] | 0.750 [0.650, 0.850] | +0.250 [" in primary
    assert "McNemar p = " in primary
    assert not [line for line in lines if "may answer" in line]  # no decision.approvers: anyone may
    assert lines[-1] == f"[Run report]({link}) (every figure and plot of the run)"


def test_the_approval_request_names_who_may_answer(decided, make_config, metadata_url: str) -> None:
    config, summary = decided
    approvers = ["alice", {"id": "7", "name": "Bob"}]
    decision = config.workload(WORKLOAD).decision.model_dump() | {
        "approval": "required",
        "approvers": approvers,
    }
    approving = make_config(metadata_url=metadata_url, decision=decision)

    _, body = approval_request(run_context(approving, summary["dag_run_id"]), summary, report_url=None)

    assert body.splitlines()[-1] == "Only alice, Bob (id 7) may answer (decision.approvers)."
