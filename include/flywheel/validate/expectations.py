"""Batch-level expectations of a day's records, as Great Expectations suites defined in code.

Two suites run on every validated day, both versioned by name (bump the version when a rule
changes, so stored results stay interpretable):

- ``flywheel.raw_schema.v1`` on the raw partition's columns: schema drift (new or vanished columns).
- ``flywheel.day_batch.v1`` on one summary row per record (label, quarantine reason, duplicate flag,
  timestamp): enough clean records, quarantine rate, duplicate rate, timestamps inside the interval,
  and the shift of the tool-name distribution against the previous days (KL divergence, reported).
  Under ``tool_shift_action: alert`` the shift's expectation has GX severity ``warning``: a shift
  above ``max_tool_shift`` is flagged (``tool_shift_exceeded``, ``warnings``) but passes the batch.

GX Core is called directly (the Airflow GX provider does not install with Airflow 3.3). The result is
returned as JSON, and Data Docs are built with a file context and copied into the artifact store.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel import artifacts
from flywheel.config import DataQualityConfig

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.storage import ArtifactStore

log = logging.getLogger(__name__)

RAW_SCHEMA_SUITE = "flywheel.raw_schema.v1"
DAY_BATCH_SUITE = "flywheel.day_batch.v1"
SUMMARY_COLUMNS = ("record_id", "timestamp", "label", "reason", "is_clean", "is_duplicate")
TOOL_SHIFT_EXPECTATION = "expect_column_kl_divergence_to_be_less_than"


@dataclass
class ExpectationOutcome:
    """One expectation's verdict, in the terms an operator reads in the run summary."""

    suite: str
    expectation: str
    column: str | None
    success: bool
    observed: Any
    severity: str = "critical"
    """GX severity: only a failed ``critical`` expectation fails the batch; a ``warning`` is flagged."""


@dataclass
class BatchValidation:
    """The verdict on a day's batch: every expectation, overall success and where the evidence is.

    ``failed``: the failed critical expectations (each fails the batch); ``warnings``: the failed
    warning ones (flagged, the batch passes); ``tool_shift_exceeded``: the tool shift is above
    ``max_tool_shift``, whether that failed the batch or only warned.
    """

    success: bool
    outcomes: list[ExpectationOutcome]
    tool_shift: float | None
    result_json: dict[str, Any]
    data_docs_uri: str | None = None
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tool_shift_exceeded: bool = False


def tool_distribution_weights(current: dict[str, int], baseline: dict[str, int]) -> dict[str, float] | None:
    """Baseline label weights over every label seen in either period, smoothed so a label new today
    gives a finite (and large) divergence instead of infinity. None when there is no baseline."""
    total = sum(baseline.values())
    if total == 0:
        return None
    labels = sorted(set(current) | set(baseline))
    epsilon = 0.5 / (total + len(labels))  # additive smoothing of half a record per label
    raw = {label: baseline.get(label, 0) / total + epsilon for label in labels}
    norm = sum(raw.values())
    return {label: weight / norm for label, weight in raw.items()}


def validate_batch(
    summary: pd.DataFrame,
    raw_columns: list[str],
    *,
    expected_raw_columns: list[str],
    rules: DataQualityConfig,
    interval: tuple[datetime, datetime],
    baseline_labels: dict[str, int],
    docs_target: tuple[ArtifactStore, str] | None = None,
) -> BatchValidation:
    """Run both suites on a day's summary frame and the raw partition's column list.

    With ``docs_target`` (store, path), Data Docs are built with a file context and copied there.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.expectations.row_conditions import Column

    clean_only = Column("is_clean") == True  # noqa: E712 - builds a GX condition, not a comparison

    started = time.perf_counter()
    clean_labels = summary.loc[summary["is_clean"], "label"].value_counts().to_dict()
    weights = tool_distribution_weights(clean_labels, baseline_labels)
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-gx-"))
    if docs_target is None:
        context = gx.get_context(mode="ephemeral")
    else:
        context = gx.get_context(mode="file", project_root_dir=str(workdir))
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("flywheel")

    schema_suite = context.suites.add(gx.ExpectationSuite(name=RAW_SCHEMA_SUITE))
    schema_suite.add_expectation(
        gxe.ExpectTableColumnsToMatchSet(column_set=list(expected_raw_columns), exact_match=True)
    )
    batch_suite = context.suites.add(gx.ExpectationSuite(name=DAY_BATCH_SUITE))
    start, end = interval
    for expectation in (
        # Enough clean records: the sum of the boolean is_clean column is the clean count.
        gxe.ExpectColumnSumToBeBetween(column="is_clean", min_value=rules.min_clean_records),
        # Quarantine rate: reason is null for clean records.
        gxe.ExpectColumnValuesToBeNull(column="reason", mostly=1 - rules.max_quarantine_rate),
        # Duplicate rate within the day (the dataset build removes duplicates across the window).
        gxe.ExpectColumnValuesToBeInSet(
            column="is_duplicate", value_set=[False], mostly=1 - rules.max_duplicate_rate
        ),
        gxe.ExpectColumnValuesToBeUnique(column="record_id"),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value=pd.Timestamp(start),
            max_value=pd.Timestamp(end),
            strict_max=True,
            row_condition=clean_only,
        ),
    ):
        batch_suite.add_expectation(expectation)
    if weights is not None:
        batch_suite.add_expectation(
            gxe.ExpectColumnKLDivergenceToBeLessThan(
                column="label",
                partition_object={"values": list(weights), "weights": list(weights.values())},
                threshold=rules.max_tool_shift,
                row_condition=clean_only,
                severity="warning" if rules.tool_shift_action == "alert" else "critical",
            )
        )

    schema_frame = pd.DataFrame({column: [] for column in raw_columns})
    results = {}
    for name, suite, frame in (
        (RAW_SCHEMA_SUITE, schema_suite, schema_frame),
        (DAY_BATCH_SUITE, batch_suite, summary),
    ):
        asset = source.add_dataframe_asset(name.replace(".", "_"))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=name, data=asset.add_batch_definition_whole_dataframe(name), suite=suite
            )
        )
        results[name] = definition.run(batch_parameters={"dataframe": frame})
    docs_uri = None
    if docs_target is not None:
        context.build_data_docs()
        store, target = docs_target
        docs_uri = _publish(store, workdir / "gx" / "uncommitted" / "data_docs" / "local_site", target)
    shutil.rmtree(workdir, ignore_errors=True)

    outcomes = [
        ExpectationOutcome(
            suite=name,
            expectation=r.expectation_config.type,
            column=r.expectation_config.kwargs.get("column"),
            success=bool(r.success),
            observed=_observed(r.result),
            severity=str(r.expectation_config.severity.value),
        )
        for name, result in results.items()
        for r in result.results
    ]
    shift = next((o for o in outcomes if o.expectation == TOOL_SHIFT_EXPECTATION), None)
    failed = [o for o in outcomes if not o.success]
    return BatchValidation(
        success=all(o.severity != "critical" for o in failed),
        outcomes=outcomes,
        tool_shift=None if shift is None else _finite(shift.observed),
        result_json={name: result.to_json_dict() for name, result in results.items()},
        data_docs_uri=docs_uri,
        seconds=round(time.perf_counter() - started, 3),
        failed=[_name(o) for o in failed if o.severity == "critical"],
        warnings=[_name(o) for o in failed if o.severity != "critical"],
        tool_shift_exceeded=shift is not None and not shift.success,
    )


def _name(outcome: ExpectationOutcome) -> str:
    """How an expectation is named in summaries and errors: ``<expectation>(<column>)``."""
    return f"{outcome.expectation}({outcome.column or ''})"


def _publish(store: ArtifactStore, docs_dir: Path, target: str) -> str:
    """Copy a built Data Docs site into the artifact store; return the URL of its index page."""
    if store.fs.exists(target):
        store.fs.rm(target, recursive=True)
    store.fs.put(str(docs_dir), target, recursive=True)
    return store.uri(artifacts.data_docs_index(target))


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return _plain(result["observed_value"])
    if "unexpected_percent" in result:
        return {
            "unexpected_percent": _plain(result.get("unexpected_percent")),
            "element_count": result.get("element_count"),
        }
    return None


def _plain(value: Any) -> Any:
    """numpy scalars and containers to JSON-ready Python values."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
