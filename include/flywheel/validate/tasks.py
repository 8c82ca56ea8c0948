"""Body of the DAG's ``validate`` task."""

from __future__ import annotations

import logging
from typing import Any

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def validate(ctx: RunContext) -> dict[str, Any]:
    """Validate the interval's raw partition into clean and quarantine partitions and record the verdict.

    Raises DataQualityError when a batch expectation fails, after committing the partitions and the
    evidence (validation result, Data Docs) so an operator can inspect them. A tool shift above
    ``max_tool_shift`` under ``tool_shift_action: alert`` passes, flagged (``tool_shift_exceeded``) for
    ``decide`` and the retrain policy.
    """
    from flywheel.errors import DataQualityError
    from flywheel.tracking import record_validation
    from flywheel.validate.day import validate_day

    with ctx.stage("validate") as stage:
        result = validate_day(
            ctx.store,
            workload_id=ctx.workload_id,
            start=ctx.interval_start,
            end=ctx.interval_end,
            rules=ctx.workload.data_quality,
        )
        record_validation(ctx.config.metadata, result, ctx.run_id)
        stage.summary = result.to_dict()
        log.info(
            "validated %s %s: %d extracted = %d clean + %d quarantined (%s); %d duplicates in the day; "
            "data docs: %s",
            ctx.workload_id,
            result.day,
            result.extracted,
            result.clean,
            result.quarantined,
            result.reasons or "no quarantine",
            result.duplicates_in_day,
            result.data_docs_uri,
        )
        if result.success and result.tool_shift_exceeded:
            log.warning(
                "the tool distribution of %s %s shifted: KL divergence %s above max_tool_shift %s "
                "(tool_shift_action alert: the batch passes, the decision alerts)",
                ctx.workload_id,
                result.day,
                result.tool_shift,
                ctx.workload.data_quality.max_tool_shift,
            )
        if not result.success:
            raise DataQualityError(
                f"batch of {ctx.workload_id} {result.day} failed: {', '.join(result.failed_expectations)}; "
                f"evidence: {result.data_docs_uri or result.validation_uri}"
            )
    return stage.summary
