"""What the Flywheel page reads, written through the flywheel's own code: a metadata database with four
nights of one workload (two promotions, a no-change and a run without a decision) and an artifact store
holding the run report and Data Docs of the second promotion's night.

Fixtures (``pytest_plugins = ["ui_seed"]``): ``seeded`` (that state under a fresh test configuration)
and ``airflow_api`` (the Airflow api-server's app with the plugins folder loaded, as a TestClient);
:func:`page_sections` reads a Flywheel page back (per workload: text, table rows, links).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser

import pytest

from flywheel import artifacts
from flywheel.config import FlywheelConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision
from flywheel.deliver import registry
from flywheel.report.data import report_data
from flywheel.report.render import render_report, write_report
from flywheel.storage import ArtifactStore
from flywheel.tracking import ensure_run, record_evaluation

WORKLOAD = "customer_support_router"
"""The seeded workload; the configuration's other one (``bfcl_live_assistant``) has no data."""
PRIMARY = "function_name_and_args_accuracy"
FIRST_NIGHT = date(2026, 11, 18)
PROMOTED_DAY = date(2026, 11, 20)
"""The night whose challenger became the current champion (version 2); its report and Data Docs exist."""
UNDECIDED_DAY = date(2026, 11, 21)
"""A run that stopped before its decision and wrote no report."""
DATA_DOCS_PAGE = "validations/clean/expectation_suite.html"
"""A page inside the Data Docs site of PROMOTED_DAY, linked from its index."""


@dataclass(frozen=True)
class Seeded:
    config: FlywheelConfig
    store: ArtifactStore
    report: str
    """The run report of PROMOTED_DAY, path relative to the store's root."""
    report_html: str


def dag_run_id(day: date) -> str:
    return f"scheduled__{day.isoformat()}T02:00:00+00:00"


def _run(config: FlywheelConfig, day: date) -> int:
    start = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
    return ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id=config.workload(WORKLOAD).dag_id,
        dag_run_id=dag_run_id(day),
        interval_start=start,
        interval_end=start + timedelta(days=1),
    )


def _decide(config: FlywheelConfig, run_id: int, outcome: str, reasons: list[dict], **fields: object) -> int:
    with session_scope(config.metadata) as session:
        row = Decision(
            run_id=run_id,
            workload_id=WORKLOAD,
            outcome=outcome,
            reasons=reasons,
            primary_metric=PRIMARY,
            candidates=[],
            policy=config.workload(WORKLOAD).decision.model_dump(mode="json"),
            **fields,
        )
        session.add(row)
        session.flush()
        return row.id


def _version(config: FlywheelConfig, run_id: int, day: date, value: float) -> registry.VersionInfo:
    return registry.register_version(
        config.metadata,
        workload_id=WORKLOAD,
        run_id=run_id,
        candidate_id="smollm2-135m",
        eval_type="customized",
        model={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": f"/adapters/{day}"},
        dataset_id=f"ds-{day}",
        metrics={PRIMARY: {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 200}},
    )


def _evaluated(config: FlywheelConfig, run_id: int, day: date, eval_type: str, value: float) -> None:
    """The night's evaluation of the champion (``eval_type`` "champion") or of the customized challenger."""
    candidate = "champion" if eval_type == "champion" else "smollm2-135m"
    output = store_uri(config, artifacts.evaluate_dir(WORKLOAD, day, candidate, eval_type))
    record_evaluation(
        config.metadata,
        run_id,
        workload_id=WORKLOAD,
        dataset_id=f"ds-{day}",
        candidate_id=candidate,
        eval_type=eval_type,
        model={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        result_uri=artifacts.job_uri(output, artifacts.RESULT),
        result={
            "examples": 200,
            "examples_hash": "0" * 32,
            "metrics": {PRIMARY: {"value": value, "ci_low": value - 0.06, "ci_high": value + 0.06, "n": 200}},
            "latency_s": {"p95": 0.4},
            "examples_uri": artifacts.job_uri(output, artifacts.EXAMPLES),
        },
        error=None,
    )


def store_uri(config: FlywheelConfig, relative: str) -> str:
    return artifacts.uri(config.artifact_store.root, relative)


def _comparison(champion: float, challenger: float, p_value: float) -> dict:
    return {
        PRIMARY: {
            "role": "primary",
            "n": 200,
            "champion": champion,
            "challenger": challenger,
            "difference": challenger - champion,
            "ci_low": challenger - champion - 0.03,
            "ci_high": challenger - champion + 0.03,
            "p_value": p_value,
            "passed": p_value < 0.05,
        }
    }


def seed(config: FlywheelConfig) -> Seeded:
    """Four nights of WORKLOAD in ``config``'s metadata database, and PROMOTED_DAY's pages in its store."""
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    side = {"candidate_id": "smollm2-135m", "eval_type": "customized"}

    night_1 = _run(config, FIRST_NIGHT)
    _evaluated(config, night_1, FIRST_NIGHT, "customized", 0.71)
    first = _version(config, night_1, FIRST_NIGHT, 0.71)
    decision_1 = _decide(
        config,
        night_1,
        "promote",
        [{"code": "first_champion", "message": "no champion yet; the challenger clears the floor"}],
        challenger=side | {"version": first.version},
        comparisons={},
    )
    registry.promote(
        config.metadata,
        WORKLOAD,
        first.version,
        actor=f"flywheel_{WORKLOAD}/{dag_run_id(FIRST_NIGHT)}",
        reason="first_champion",
        decision_id=decision_1,
    )

    night_2 = _run(config, FIRST_NIGHT + timedelta(days=1))
    _evaluated(config, night_2, FIRST_NIGHT + timedelta(days=1), "champion", 0.70)
    _evaluated(config, night_2, FIRST_NIGHT + timedelta(days=1), "customized", 0.73)
    _decide(
        config,
        night_2,
        "no_change",
        [{"code": "not_significant", "message": "p = 0.2100 is not below alpha = 0.05"}],
        champion=side | {"version": first.version},
        challenger=side,
        comparisons=_comparison(0.71, 0.73, 0.21),
    )

    night_3 = _run(config, PROMOTED_DAY)
    _evaluated(config, night_3, PROMOTED_DAY, "champion", 0.71)
    _evaluated(config, night_3, PROMOTED_DAY, "customized", 0.815)
    second = _version(config, night_3, PROMOTED_DAY, 0.815)
    decision_3 = _decide(
        config,
        night_3,
        "promote",
        [{"code": "challenger_superior", "message": "the challenger beats the champion by +0.105"}],
        champion=side | {"version": first.version},
        challenger=side | {"version": second.version},
        comparisons=_comparison(0.71, 0.815, 0.00002),
        examples=200,
    )
    registry.promote(
        config.metadata,
        WORKLOAD,
        second.version,
        actor=f"flywheel_{WORKLOAD}/{dag_run_id(PROMOTED_DAY)}",
        reason="challenger_superior",
        decision_id=decision_3,
        expected_champion=first.version,
    )

    _run(config, UNDECIDED_DAY)

    report = artifacts.report_path(WORKLOAD, PROMOTED_DAY)
    html = render_report(report_data(config, WORKLOAD, dag_run_id(PROMOTED_DAY)))
    write_report(store, report, html)
    docs = artifacts.data_docs_dir(WORKLOAD, PROMOTED_DAY)
    store.write_bytes_atomic(
        store.path(artifacts.data_docs_index(docs)),
        f'<html><body><h1>Data Docs</h1><a href="{DATA_DOCS_PAGE}">clean batch</a></body></html>'.encode(),
    )
    store.write_bytes_atomic(
        store.path(docs, DATA_DOCS_PAGE), b"<html><body><h1>Expectation suite</h1></body></html>"
    )
    store.write_json_atomic(
        store.path(artifacts.validation_result(WORKLOAD, PROMOTED_DAY)), {"success": True}
    )
    return Seeded(config, store, report, html)


@pytest.fixture
def seeded(make_config) -> Seeded:
    """The seeded state under a fresh test configuration (``FLYWHEEL_CONFIG`` points at it)."""
    return seed(make_config())


@pytest.fixture(scope="session")
def airflow_api(airflow_db) -> Iterator[object]:
    """Airflow's api-server app (core API, auth manager, plugins from plugins/) in a TestClient."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core")) as client:
        yield client


def token(username: str = "admin", role: str | None = "admin") -> str:
    """A JWT that the api-server's (simple) auth manager signed for ``username`` with ``role``."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


@dataclass
class Section:
    """What one workload's section of the Flywheel page shows, as text."""

    text: str = ""
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    """Table class (``runs``, ``history``) -> its body rows, each cell as its text (spaces collapsed)."""
    links: dict[str, list[str]] = field(default_factory=dict)
    """Link class (``report``, ``data-docs``) -> the hrefs, in page order."""
    images: list[str] = field(default_factory=list)
    """The ``src`` of each image."""
    terms: dict[str, str] = field(default_factory=dict)
    """Each ``<dt>``'s text -> its ``<dd>``'s text (the champion's card)."""


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, Section] = {}
        self._section: Section | None = None
        self._table: list[list[str]] | None = None
        self._in_body = False
        self._in_cell = False
        self._term: str | None = None
        self._in_term = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = self.sections.setdefault(str(a["id"]), Section())
        elif self._section is None:
            return
        elif tag == "table":
            self._table = self._section.tables.setdefault(str(a.get("class")), [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._in_body and self._table is not None:
            self._table[-1].append("")
            self._in_cell = True
        elif tag == "a" and a.get("class"):
            self._section.links.setdefault(str(a["class"]), []).append(str(a["href"]))
        elif tag == "img":
            self._section.images.append(str(a["src"]))
        elif tag == "dt":
            self._term, self._in_term = "", True
        elif tag == "dd" and self._term is not None:
            self._section.terms[self._term] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "td" and self._in_cell and self._table:
            self._table[-1][-1] = " ".join(self._table[-1][-1].split())
            self._in_cell = False
        elif tag == "dt":
            self._in_term = False
        elif tag == "dd":
            self._term = None

    def handle_data(self, data: str) -> None:
        if self._section is None:
            return
        self._section.text += data
        if self._in_term:
            self._term = (self._term or "") + data
        elif self._term is not None and self._term in self._section.terms:
            self._section.terms[self._term] += data
        if self._in_cell and self._table:
            self._table[-1][-1] += data


def page_sections(html: str) -> dict[str, Section]:
    """The workload sections of a Flywheel page, by workload id."""
    parser = _PageParser()
    parser.feed(html)
    return parser.sections
