"""What the students save against the teacher: the teacher's figures from a real raw partition (logs
extracted through the ``files`` source), a student's from a ``result.json`` written by the evaluation
job's own summary, and the costs per 1,000 requests, all checked against values worked out by hand."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from conftest import write_config
from flywheel.config import FlywheelConfig, StudentPrices, load_config
from flywheel.errors import ConfigError
from flywheel.evaluate.examples import EvalExample
from flywheel.evaluate.generation import Generation
from flywheel.evaluate.parsing import ParsedAnswer
from flywheel.evaluate.runner import ScoredExample, summarize
from flywheel.extract.partition import extract_interval
from flywheel.extract.sources.files import FilesSource
from flywheel.report.data import report_data
from flywheel.report.render import render_report
from flywheel.report.savings import cost_per_1k, student_usage, teacher_usage
from flywheel.storage import ArtifactStore
from flywheel.tracking import ensure_run, record_evaluation
from logdocs import END, START, clean_doc

WORKLOAD = "customer_support_router"
PRICES = {
    "currency": "EUR",
    "teacher": {"input_per_1m": 2.0, "output_per_1m": 6.0},
    "student": {"input_per_1m": 0.1, "output_per_1m": 0.4, "per_hour": 3.6},
}


def teacher_doc(n: int, usage: tuple[int, int] | None, latency_ms: float | None) -> dict[str, Any]:
    """A logged teacher request with its OpenAI ``usage`` and the gateway's ``latency_ms`` (each optional)."""
    doc = clean_doc(START + timedelta(minutes=n), n, workload=WORKLOAD)
    if usage is not None:
        doc["response"]["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    if latency_ms is not None:
        doc["latency_ms"] = latency_ms
    return doc


def student_result() -> dict[str, Any]:
    """A ``result.json`` as the evaluation job writes it, summarised by its own code from four answers:
    latencies 0.1, 0.1, 0.2 and 0.4 s, 150 or 250 input tokens and 10 output tokens each, 8 examples/s."""
    scored = [
        ScoredExample(
            EvalExample(f"e{i}", [{"role": "user", "content": "hi"}], [], [], "hello", "no_call"),
            Generation(text="hello", latency_s=latency, tokens_in=tokens_in, tokens_out=10),
            ParsedAnswer([], "hello"),
            {},
            [],
        )
        for i, (latency, tokens_in) in enumerate(((0.1, 150), (0.1, 150), (0.2, 250), (0.4, 250)))
    ]
    return summarize(scored, []) | {
        "examples": 4,
        "examples_hash": "h",
        "examples_per_s": 8.0,
        "model": {"base_model": "base", "adapter": "a"},
        "examples_uri": "unused",
    }


@pytest.fixture
def recorded(make_config, tmp_path: Path) -> tuple[FlywheelConfig, str]:
    """A run of the router whose day's logs hold four teacher requests and whose customized student
    was evaluated; the workload sets prices."""
    config = make_config(report={"prices": PRICES})
    logs = tmp_path / "logs" / f"dt={START:%Y-%m-%d}"
    logs.mkdir(parents=True)
    docs = [
        teacher_doc(1, (100, 20), 100),
        teacher_doc(2, (200, 40), 200),
        teacher_doc(3, (300, 60), 900),
        teacher_doc(4, None, None),  # logged without usage or latency: counted, not averaged
    ]
    (logs / "part-0.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    store = ArtifactStore(config.artifact_store.root)
    extract_interval(
        FilesSource(url=str(tmp_path / "logs")), store, workload_id=WORKLOAD, start=START, end=END
    )
    dag_run_id = "scheduled__2026-11-20T02:00:00+00:00"
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id=config.workload(WORKLOAD).dag_id,
        dag_run_id=dag_run_id,
        interval_start=START,
        interval_end=END,
    )
    output = tmp_path / "evaluate" / "tiny" / "customized"
    output.mkdir(parents=True)
    result = student_result()
    (output / "result.json").write_text(json.dumps(result))
    record_evaluation(
        config.metadata,
        run_id,
        workload_id=WORKLOAD,
        dataset_id="ds",
        candidate_id="tiny",
        eval_type="customized",
        model=result["model"],
        result_uri=str(output / "result.json"),
        result=result,
        error=None,
    )
    return config, dag_run_id


def test_the_savings_are_the_hand_computed_figures(recorded: tuple[FlywheelConfig, str]) -> None:
    config, dag_run_id = recorded

    data = report_data(config, WORKLOAD, dag_run_id)

    assert data is not None
    savings = data["savings"]
    assert savings["currency"] == "EUR" and savings["requests_per_cost"] == 1000
    # Teacher: tokens (100, 20), (200, 40), (300, 60) -> 200 in and 40 out per request; latencies 0.1,
    # 0.2, 0.9 s -> p50 0.2, p95 0.2 + 0.9 x (0.9 - 0.2) = 0.83 (linear interpolation, as the students').
    # Cost: (200 x 2 + 40 x 6) / 1e6 per request = 0.00064, so 0.64 per 1,000 requests.
    assert savings["teacher"] == {
        "requests": 4,
        "with_usage": 3,
        "with_latency": 3,
        "latency_p50_s": 0.2,
        "latency_p95_s": 0.83,
        "tokens_in": 200.0,
        "tokens_out": 40.0,
        "cost_per_1k": pytest.approx(0.64),
    }
    # Student: latencies 0.1, 0.1, 0.2, 0.4 -> p50 0.15, p95 0.2 + 0.85 x 0.2 = 0.37; 800 / 4 = 200 in,
    # 10 out. Tokens: (200 x 0.1 + 10 x 0.4) / 1e6 = 0.000024; compute: 3.6 / 3600 / 8 = 0.000125 per
    # request; together 0.000149, so 0.149 per 1,000 requests.
    (student,) = savings["students"]
    assert student == {
        "candidate_id": "tiny",
        "eval_type": "customized",
        "requests": 4,
        "latency_p50_s": 0.15,
        "latency_p95_s": 0.37,
        "tokens_in": 200.0,
        "tokens_out": 10.0,
        "examples_per_s": 8.0,
        "cost_per_1k": pytest.approx(0.149),
    }
    json.dumps(savings)


def test_the_report_tables_and_draws_the_savings(recorded: tuple[FlywheelConfig, str]) -> None:
    config, dag_run_id = recorded
    data = report_data(config, WORKLOAD, dag_run_id)
    assert data is not None

    page = render_report(data)

    section = re.search(r'<section id="savings">(.*?)</section>', page, re.S)
    assert section
    html = section[1]
    assert html.count("<svg ") == 1
    assert "<th>cost per 1,000 (EUR)</th>" in html
    teacher = re.search(r"<tr><td><b>teacher</b>.*?</tr>", html)
    assert teacher
    for cell in ("4", "0.20 s", "0.83 s", "200.0", "40.0", "0.64"):
        assert f'<td class="num">{cell}</td>' in teacher[0]
    student = re.search(r"<tr><td>tiny/customized</td>.*?</tr>", html)
    assert student
    # against the teacher: p95 0.37 / 0.83 - 1 = -55 %, input tokens equal, cost 0.149 / 0.64 - 1 = -77 %
    for cell in ("0.15 s", "0.37 s", "0.149", "-55%", "+0%", "-77%"):
        assert f'<td class="num">{cell}</td>' in student[0]
    assert "4 logged requests, 3 with token usage, 3 with a latency" in html


def test_without_prices_there_are_no_costs_and_the_chart_says_so(make_config, tmp_path: Path) -> None:
    config = make_config()
    assert config.workload(WORKLOAD).report.prices is None
    student = student_usage(student_result())
    data = {"savings": {"currency": None, "requests_per_cost": 1000, "teacher": None, "students": []}}
    data["savings"]["students"] = [
        {"candidate_id": "tiny", "eval_type": "icl", **student, "cost_per_1k": None}
    ]

    page = render_report(data)

    html = re.search(r'<section id="savings">(.*?)</section>', page, re.S)[1]
    assert ">no prices set (report.prices)</text>" in html
    assert "<th>cost per 1,000</th>" in html
    assert "No teacher row: the day's logs (its raw partition) are not in the artifact store." in html
    assert "No prices are set, so no costs are shown" in html


def test_a_student_priced_per_hour_needs_its_throughput() -> None:
    prices = StudentPrices(per_hour=3.6)
    assert cost_per_1k({"examples_per_s": 2.0}, prices) == pytest.approx(0.5)  # 1000 x 3.6 / 3600 / 2
    assert cost_per_1k({"examples_per_s": None}, prices) is None
    tokens = StudentPrices(input_per_1m=1.0, output_per_1m=1.0)
    assert cost_per_1k({"tokens_in": None, "tokens_out": 5}, tokens) is None


@pytest.mark.parametrize(
    ("student", "error"),
    [
        ({}, "student: set input_per_1m and output_per_1m, per_hour, or all three"),
        ({"input_per_1m": 1.0}, "student: set both input_per_1m and output_per_1m, or neither"),
        ({"per_hour": -1}, "student.per_hour: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_price_is_an_error_naming_its_key(tmp_path: Path, student: dict[str, Any], error: str) -> None:
    path = write_config(tmp_path, report={"prices": {"teacher": PRICES["teacher"], "student": student}})

    with pytest.raises(ConfigError, match=re.escape(f"workloads[0].report.prices.{error}")):
        load_config(path)


def test_the_teachers_latency_field_is_configurable_and_unreadable_records_count_without_figures() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "response_json": [
                json.dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 2}}),
                json.dumps({"usage": {"prompt_tokens": "ten", "completion_tokens": 2}}),  # not a count
                "{not json",
                None,
            ],
            "extra_json": [
                json.dumps({"gateway-latency": 250, "other": {"nested": [1]}}),
                json.dumps({"gateway-latency": "slow"}),
                json.dumps({"gateway-latency": 750}),
                None,
            ],
        }
    )

    usage = teacher_usage([batch], "gateway-latency")

    assert usage == {
        "requests": 4,
        "with_usage": 1,
        "with_latency": 2,
        "latency_p50_s": 0.5,
        "latency_p95_s": 0.725,  # 0.25 + 0.95 x 0.5
        "tokens_in": 10.0,
        "tokens_out": 2.0,
    }
    assert teacher_usage([batch], None)["with_latency"] == 0
