"""Body of the DAG's ``build_dataset`` task."""

from __future__ import annotations

import logging
from typing import Any

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def build_dataset(ctx: RunContext) -> dict[str, Any]:
    """Build the dataset of the training window that ends with the run's day, and record it."""
    from flywheel.dataset.build import build_dataset as build
    from flywheel.tracking import record_dataset

    with ctx.stage("build_dataset") as stage:
        result = build(ctx.store, ctx.workload, ctx.day)
        record_dataset(ctx.config.metadata, result, ctx.run_id)
        stage.summary = result.to_dict() | ctx.interval_summary()
    log.info(
        "dataset %s: %s, %d duplicates removed", result.dataset_id, result.counts, result.duplicates_removed
    )
    return stage.summary
