"""Body of the DAG's ``decide`` task (``branch`` only follows the outcome it returns)."""

from __future__ import annotations

from typing import Any

from flywheel.context import RunContext


def decide(ctx: RunContext) -> dict[str, Any]:
    """Decide promote / alert / no_change from the run's recorded evidence and record the decision.

    Runs whatever happened upstream: a failed stage is itself the evidence (an alert).
    """
    from flywheel.decide.evidence import decide_run

    with ctx.stage("decide") as stage:
        stage.summary = (
            decide_run(ctx.config, ctx.workload_id, ctx.run_id, dry_run=ctx.options.dry_run)
            | ctx.interval_summary()
        )
    return stage.summary
